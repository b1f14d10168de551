"""What the frozen encoders' features allow on the synthetic data: probe accuracies.

    python benchmarks/probe_synth_features.py [--model tiny] [--n 200] [--seed 1]

The tiny preset's encoders are frozen RANDOM networks (a HuBERT stand-in for MERT, ViT,
ViViT from small configs). Before asking the LLM to answer "what instrument is this?",
this measures whether their features carry the answer at all, on held-out items (half
for fitting, half for testing), with three probes per attribute:

- centroid: nearest class mean of the standardised, flattened raw features;
- ridge:    a linear classifier (one-hot least squares) on the same features — what any
            linear read-out of the raw features can reach;
- adapter:  the model's own UnderstandingAdapter (Conv1d over tokens → L2 norm → Linear →
            SwiGLU blocks, one D-wide vector) + a linear head, trained with Adam — what
            can reach the LLM through the one injected vector per modality.

It also prints each modality's common direction: the mean pairwise cosine between items
of the token-averaged, L2-normalised features — what the adapter's Conv1d + L2 norm start
from. Near 1, every item looks the same to the LLM however separable the features are
for a probe (the tiny preset's MERT stand-in: 0.98; stage 1 cannot use it).

For audio it also probes `frames`: the per-frame hidden states that the encoder averages
away (DESIGN.md §1: MERT features are the time mean of every layer), summarised by the
modulation spectrum of each channel — whether tempo is in the audio before averaging.
Chance is 1 / classes; tempo is also scored within ±10 BPM.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from m2ugen.data.synth import synthesize
from m2ugen.data.synth_qa import VALUES, read_items
from m2ugen.media import load_media
from m2ugen.model import M2UGen
from m2ugen.modules.adapters import UnderstandingAdapter

ATTRIBUTES = {"audio": ("instrument", "bpm", "tonic", "mode", "key"),
              "image": ("colour", "shape", "background"),
              "video": ("direction", "colour", "shape")}


def features(model: M2UGen, items, modality: str) -> torch.Tensor:
    """Raw encoder features (N, tokens, width), as the adapters receive them."""
    out = []
    for it in items:
        media = load_media(modality, it.path, model.media_spec)
        out.append(model.encode(1, **{modality: media})[modality][0][0])
    return torch.stack(out).float()


@torch.no_grad()
def frame_features(model: M2UGen, items) -> torch.Tensor:
    """Per-channel modulation spectrum of every layer's frames (N, layers·width·bins):
    what the time average throws away (tempo lives in how features change over time)."""
    enc = model.encoders["audio"]
    out = []
    for it in items:
        wav = load_media("audio", it.path, model.media_spec)
        values = enc.processor(wav, sampling_rate=enc.sample_rate,
                               return_tensors="pt")["input_values"]
        hidden = enc.model(values, output_hidden_states=True).hidden_states
        x = torch.stack([h[0] for h in hidden])  # (L+1, frames, W), 50 frames/s
        x = x - x.mean(1, keepdim=True)
        spec = torch.fft.rfft(x, n=256, dim=1).abs()[:, 1:33]  # 0.2–6 Hz (12–370 BPM)
        out.append(spec.permute(0, 2, 1).reshape(-1))
    return torch.stack(out)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def standardise(x: torch.Tensor, fit: np.ndarray) -> torch.Tensor:
    x = x.reshape(len(x), -1)
    mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
    return (x - mu) / sd


def centroid_acc(x, y, fit, test, classes) -> float:
    cents = torch.stack([x[fit][y[fit] == c].mean(0) if (y[fit] == c).any()
                         else torch.full_like(x[0], 1e9) for c in range(classes)])
    pred = torch.cdist(x[test], cents).argmin(1)
    return float((pred == y[test]).float().mean())


def ridge_pred(x, y, fit, test, classes, lam: float = 10.0) -> torch.Tensor:
    xf = torch.cat([x[fit], torch.ones(len(fit), 1)], 1).double()
    onehot = torch.nn.functional.one_hot(y[fit], classes).double()
    w = torch.linalg.solve(xf.T @ xf + lam * torch.eye(xf.shape[1], dtype=xf.dtype),
                           xf.T @ onehot)
    xt = torch.cat([x[test], torch.ones(len(test), 1)], 1).double()
    return (xt @ w).argmax(1)


def adapter_pred(feats, y, fit, test, classes, dim: int, blocks: int, steps: int = 300,
                 seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    adapter = UnderstandingAdapter(feats.shape[1], feats.shape[2], dim, blocks=blocks)
    head = torch.nn.Linear(dim, classes)
    params = [*adapter.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(adapter(feats[fit])[:, 0]), y[fit])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return head(adapter(feats[test])[:, 0]).argmax(1)


def labels(items, attr: str) -> tuple[torch.Tensor, int, tuple]:
    values = VALUES[attr]
    return torch.tensor([values.index(it.facts[attr]) for it in items]), len(values), values


def score(pred, y, test, values, attr) -> str:
    acc = float((pred == y[test]).float().mean())
    if attr != "bpm":
        return f"{100 * acc:5.1f}"
    bpm = torch.tensor(values)
    within = float(((bpm[pred] - bpm[y[test]]).abs() <= 10).float().mean())
    return f"{100 * acc:5.1f} (±10: {100 * within:4.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny",
                   help="model whose encoders to probe (tiny, tiny-trained, a directory)")
    p.add_argument("--n", type=int, default=200, help="items per modality")
    p.add_argument("--seed", type=int, default=1, help="synthetic data seed")
    p.add_argument("--dim", type=int, default=64, help="adapter width (the LLM width)")
    p.add_argument("--blocks", type=int, default=1, help="adapter SwiGLU blocks")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = M2UGen.from_pretrained(args.model, decoder=False, warn_untrained=False)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), seed=args.seed, n_audio=args.n, n_images=args.n,
                   n_videos=args.n)
        items = read_items(tmp)
        t0 = time.perf_counter()
        feats = {m: features(model, items[m], m) for m in ATTRIBUTES}
        frames = frame_features(model, items["audio"])
        took = time.perf_counter() - t0
    print(f"{args.n} items per modality (seed {args.seed}), {args.n // 2} fit / "
          f"{args.n - args.n // 2} test; encoding took {took:.1f} s")
    print(f"{'modality':8} {'attribute':11} {'chance':>6} {'centroid':>8} {'ridge':>18} "
          f"{'adapter':>18}  {'frames (ridge)':>18}")
    for m in ATTRIBUTES:
        pooled = torch.nn.functional.normalize(feats[m].mean(1), dim=-1)
        cos = (pooled @ pooled.T).fill_diagonal_(float("nan")).nanmean()
        print(f"{m}: common direction (mean pairwise cosine after averaging tokens and L2 "
              f"normalising) {cos:.3f}")
    for m, attrs in ATTRIBUTES.items():
        fit, test = split(len(items[m]), args.seed)
        x = standardise(feats[m], fit)
        for attr in attrs:
            y, classes, values = labels(items[m], attr)
            cen = centroid_acc(x, y, fit, test, classes)
            rid = score(ridge_pred(x, y, fit, test, classes), y, test, values, attr)
            ada = score(adapter_pred(feats[m], y, fit, test, classes, args.dim, args.blocks),
                        y, test, values, attr)
            fr = ""
            if m == "audio":
                xf = standardise(frames, fit)
                fr = score(ridge_pred(xf, y, fit, test, classes, lam=100.0), y, test,
                           values, attr)
            print(f"{m:8} {attr:11} {100 / classes:6.1f} {100 * cen:8.1f} {rid:>18} "
                  f"{ada:>18}  {fr:>18}")


if __name__ == "__main__":
    main()
