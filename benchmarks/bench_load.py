"""Load cost of a model directory vs. a whole-model state dict loaded the published way.

Builds (once, into --workdir) a model directory whose LLM is a random LLaMA of about
--params parameters (tiny encoders and decoder: the LLM dominates, as with the real 7B),
plus `checkpoint.pth`: the whole model's state dict pickled as the release did. Then, each
in a fresh process, it measures wall time and peak host RSS of

  ours:      M2UGen.from_pretrained(dir)  (components one by one in the target dtype,
             safetensors mmap, trained deltas applied)
  published: the same model built from its base weights, then torch.load of the whole-model
             checkpoint (no mmap, as published) and load_state_dict on top

and prints the ratios (published / ours). Run: `python benchmarks/bench_load.py`
(about 1B parameters: ~4 GB per copy on disk in fp32, ~13 GB of RAM for the published way);
`--params 2e8` for a quick run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def llama_shape(params: float) -> dict[str, int]:
    """A LLaMA-like shape (32k vocab, FFN ≈ 2.7·D, 64-wide heads) of about `params`."""
    for dim in range(512, 8192 + 1, 256):
        layers = max(2, dim // 128)
        ffn = int(dim * 8 / 3) // 256 * 256
        n = layers * (4 * dim * dim + 3 * dim * ffn) + 2 * 32000 * dim
        if n >= params:
            return {"dim": dim, "layers": layers, "ffn": ffn, "vocab": 32000, "n": n}
    raise SystemExit("--params too large")


def build(workdir: Path, params: float) -> None:
    """Model directory (tiny preset + big random LLM) and the published-style pickle."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from m2ugen.checkpoint import TRAINED_NAME, save_tensors
    from m2ugen.model import M2UGen
    from m2ugen.presets.tiny import build_tiny

    shape = llama_shape(params)
    model_dir = workdir / "model"
    build_tiny(model_dir, model_cls=M2UGen)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["dim"],
                      intermediate_size=shape["ffn"], num_hidden_layers=shape["layers"],
                      num_attention_heads=shape["dim"] // 64, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(model_dir / "llm")
    config = json.loads((model_dir / "m2ugen.json").read_text())
    config["llm_dim"] = shape["dim"]
    (model_dir / "m2ugen.json").write_text(json.dumps(config, indent=2))
    (model_dir / TRAINED_NAME).unlink()
    model = M2UGen.from_pretrained(model_dir, warn_untrained=False)
    save_tensors(model_dir / TRAINED_NAME, model.trained_parameters())
    torch.save({"model": model.state_dict()}, workdir / "checkpoint.pth")
    (workdir / "shape.json").write_text(json.dumps(shape))


def peak_rss_gib() -> float:
    """This process's peak RSS (VmHWM: per address space, unlike ru_maxrss, which Linux
    carries over from the parent across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB → GiB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(mode: str, workdir: Path) -> None:
    """Run one way of loading in this (fresh) process; print JSON with time and peak RSS."""
    import torch

    from m2ugen.model import M2UGen

    base_rss = peak_rss_gib()
    start = time.perf_counter()
    model = M2UGen.from_pretrained(workdir / "model")
    if mode == "published":
        state = torch.load(workdir / "checkpoint.pth", map_location="cpu",
                           weights_only=True)["model"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected[:3]
    seconds = time.perf_counter() - start
    load_peak = peak_rss_gib()
    # safetensors weights may still be lazily mapped: touch every one, as a first forward
    # would, so both ways end with the whole model resident
    n = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
    touched = time.perf_counter() - start
    print(json.dumps({"mode": mode, "seconds": seconds, "load_peak_gib": load_peak,
                      "peak_gib": peak_rss_gib(), "import_gib": base_rss, "params": n,
                      "touched_seconds": touched}))


def run(mode: str, workdir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", mode, "--workdir",
                          str(workdir)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=1e9, help="LLM parameters (default 1e9)")
    p.add_argument("--workdir", type=Path, default=Path("runs/bench_load"))
    p.add_argument("--measure", choices=["ours", "published"], help=argparse.SUPPRESS)
    p.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        measure(args.measure, args.workdir)
        return
    if args.build:
        build(args.workdir, args.params)
        return
    shape = llama_shape(args.params)
    done = args.workdir / "shape.json"
    if not done.is_file() or json.loads(done.read_text()) != shape:
        print(f"building a {shape['n'] / 1e9:.2f} B-parameter LLM ({shape}) in {args.workdir}")
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--build", "--params", str(args.params),
                        "--workdir", str(args.workdir)], check=True)  # keeps this process small
        print(f"built in {time.perf_counter() - t:.0f} s")
    llm_bytes = sum(f.stat().st_size for f in (args.workdir / "model" / "llm").glob("*"))
    ckpt = (args.workdir / "checkpoint.pth").stat().st_size
    adapter = (args.workdir / "model" / "adapter.safetensors").stat().st_size
    print(f"on disk: LLM {llm_bytes / 2**30:.2f} GiB, whole-model checkpoint.pth "
          f"{ckpt / 2**30:.2f} GiB, adapter.safetensors {adapter / 2**20:.1f} MiB")
    results = {m: run(m, args.workdir) for m in ("ours", "published")}
    for m, r in results.items():
        print(f"{m:>10}: load {r['seconds']:6.1f} s ({r['touched_seconds']:.1f} s with every "
              f"weight touched); peak RSS {r['load_peak_gib']:5.2f} GiB "
              f"after loading, {r['peak_gib']:5.2f} GiB with every weight touched (imports "
              f"alone {r['import_gib']:.2f} GiB); {r['params'] / 1e9:.2f} B params")
    o, pub = results["ours"], results["published"]

    def above(r: dict) -> float:  # peak RSS above the python + imports baseline
        return r["peak_gib"] - r["import_gib"]

    print(f"ratio published/ours: load time {pub['seconds'] / o['seconds']:.2f}x (touched "
          f"{pub['touched_seconds'] / o['touched_seconds']:.2f}x); peak RSS "
          f"{pub['peak_gib'] / o['peak_gib']:.2f}x (above imports: {above(pub):.2f} vs "
          f"{above(o):.2f} GiB = {above(pub) / max(above(o), 1e-3):.2f}x); ours above imports "
          f"/ LLM size on disk = {above(o) * 2**30 / llm_bytes:.2f}")


if __name__ == "__main__":
    main()
