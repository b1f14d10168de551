"""`m2ugen train-decoder`: MusicGen and AudioLDM2 fine-tuning on the tiny decoders (CPU).

The objectives are checked against by-hand computations (the delay pattern, the
diffusion target), the trainer against itself (loss falls on one batch, resume equals
uninterrupted, 2 gloo ranks equal 1), and the result against its users (a small LoRA that
`m2ugen chat` loads, merged or kept beside, and `m2ugen info` shows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from m2ugen.chat import ChatSession
from m2ugen.cli import main
from m2ugen.data.audio_captions import read_audio_captions
from m2ugen.data.synth import write_synthetic_dataset
from m2ugen.errors import ConfigError, M2UGenError
from m2ugen.model import M2UGen
from m2ugen.modules.decoders import load_decoder
from m2ugen.modules.decoders.tuning import TUNED_CONFIG, TUNED_TENSORS
from m2ugen.training.config import load_train_config
from m2ugen.training.decoder_config import DecoderTrainConfig
from m2ugen.training.decoder_loop import train_decoder
from m2ugen.training.decoder_objectives import delayed_codes, diffusion_inputs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A directory with mucaps.json and audio/ (6 clips of 2-4 s)."""
    spec = write_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_audio=6,
                                   n_images=1, n_videos=1)
    return spec.parent


def _cfg(synth: Path, out: Path, model: Path, **kw) -> DecoderTrainConfig:
    base = dict(model=str(model), data=str(synth / "mucaps.json"),
                audio_root=str(synth / "audio"), out=str(out), clip_seconds=1.0,
                max_steps=4, batch_size=4, lr=1e-2, min_lr=1e-3, warmup_steps=1,
                holdout=2, eval_every=0, save_every=100, progress=False, tensorboard=False,
                cond_dropout=0.5, cache=str(out.parent / f"cache-{Path(model).name}"),
                eval_seconds=0.5, eval_steps=2)
    base.update(kw)
    cfg = DecoderTrainConfig(**base)
    cfg.validate()
    return cfg


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# ------------------------------------------------------------ the objectives by hand


def test_the_delay_pattern_is_the_layout_generation_uses(tiny_dir):
    lm = load_decoder("musicgen", str(tiny_dir / "musicgen"), torch.device("cpu"),
                      torch.float32).model.decoder
    pad = lm.config.pad_token_id
    b, k, t = 2, lm.config.num_codebooks, 5
    codes = torch.randint(0, 64, (b, k, t), generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([5, 3])
    seq, mask = delayed_codes(lm, codes, valid)
    want = torch.full((b, k, t + k), pad)
    want_mask = torch.zeros((b, k, t + k), dtype=torch.bool)
    for i in range(b):
        for c in range(k):
            for p in range(t + k):
                frame = p - 1 - c  # codebook c's frame f sits at position f + 1 + c
                if 0 <= frame < t:
                    want[i, c, p] = codes[i, c, frame]
                    want_mask[i, c, p] = frame < int(valid[i])
    assert torch.equal(seq, want)
    assert torch.equal(mask, want_mask)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_diffusion_target_is_the_closed_form(tiny_audioldm2_dir, prediction):
    config = json.loads((tiny_audioldm2_dir / "audioldm2" / "scheduler" /
                         "scheduler_config.json").read_text())
    sched = DDPMScheduler.from_config({**config, "prediction_type": prediction})
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 8, 4, 16, generator=g), torch.randn(3, 8, 4, 16, generator=g)
    t = torch.tensor([0, 417, 999])
    noisy, target = diffusion_inputs(sched, x0, noise, t)
    # scaled_linear betas, by hand: sqrt-spaced, squared; alpha_bar = prod(1 - beta)
    n = config["num_train_timesteps"]
    betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    abar = torch.tensor(np.cumprod(1 - betas)[t.numpy()], dtype=torch.float32)[:, None, None,
                                                                                None]
    assert torch.allclose(noisy, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-5)
    want = noise if prediction == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert torch.allclose(target, want, atol=1e-5)


# ------------------------------------------------------------ the trainer


def test_musicgen_lora_overfits_one_batch(synth, tiny_dir, tmp_path):
    # four clips, one global batch of four, no condition dropout: every step sees the same
    out = train_decoder(_cfg(synth, tmp_path / "run", tiny_dir, max_steps=15, cond_dropout=0.0))
    losses = _losses(out)
    assert len(losses) == 15 and losses[0] > 3.5  # ≈ ln 64 at the start
    assert losses[-1] < 0.75 * losses[0], losses


def test_audioldm2_loss_falls_on_one_batch(synth, tiny_audioldm2_dir, tmp_path):
    # two clips of 0.5 s, one global batch of two: every step sees the same clips
    out = train_decoder(_cfg(synth, tmp_path / "run", tiny_audioldm2_dir, max_steps=15,
                             cond_dropout=0.0, tuning="full", lr=3e-3, holdout=4,
                             batch_size=2, clip_seconds=0.5))
    losses = _losses(out)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


@pytest.fixture(scope="module")
def resumed(synth, tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """6 steps straight, and 3 + --resume 3 (condition dropout 0.5: randomness in play)."""
    tmp = tmp_path_factory.mktemp("resume")
    straight = train_decoder(_cfg(synth, tmp / "straight", tiny_dir, max_steps=6,
                                  batch_size=2))
    cut = _cfg(synth, tmp / "cut", tiny_dir, max_steps=6, batch_size=2, stop_after=3)
    train_decoder(cut)
    cut.stop_after = None
    train_decoder(cut, resume=True)
    return {"straight": straight, "cut": tmp / "cut"}


def test_resume_equals_uninterrupted(resumed):
    assert _losses(resumed["cut"]) == pytest.approx(_losses(resumed["straight"]), abs=1e-6)
    a = _tensors(resumed["straight"] / "decoder" / TUNED_TENSORS)
    b = _tensors(resumed["cut"] / "decoder" / TUNED_TENSORS)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("kind,strategy", [("musicgen", "ddp"), ("audioldm2", "fsdp")])
def test_two_gloo_ranks_equal_one_rank(synth, tiny_dir, tiny_audioldm2_dir, tmp_path, kind,
                                       strategy):
    # 1 rank × batch 2, and 2 ranks × batch 1 (the same global batch), renders included
    model = tiny_dir if kind == "musicgen" else tiny_audioldm2_dir
    one = train_decoder(_cfg(synth, tmp_path / "one", model, max_steps=3, batch_size=2,
                             eval_every=3, save_every=3, tensorboard=True))
    events = EventAccumulator(str(one / "tensorboard"), size_guidance={"audio": 0})
    events.Reload()
    assert events.Tags()["audio"] == ["samples/00", "samples/01"]  # the held-out renders
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [f"model={model}", f"data={synth / 'mucaps.json'}",
            f"audio_root={synth / 'audio'}", "clip_seconds=1.0", "max_steps=3", "lr=1e-2",
            "min_lr=1e-3", "warmup_steps=1", "holdout=2", "eval_every=3", "save_every=3",
            "eval_seconds=0.5", "eval_steps=2",
            "progress=false", "tensorboard=false", "cond_dropout=0.5", "batch_size=1",
            f"strategy={strategy}", f"cache={tmp_path / f'cache-{model.name}'}",
            f"out={tmp_path / 'two'}"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "m2ugen.cli", "train-decoder",
                          "--config", str(ROOT / "configs" / f"decoder_{kind}.yaml"), *args],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert _losses(tmp_path / "two") == pytest.approx(_losses(one), abs=1e-4)
    a = _tensors(one / "decoder" / TUNED_TENSORS)
    b = _tensors(tmp_path / "two" / "decoder" / TUNED_TENSORS)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert [p.name for p in (tmp_path / "two" / "samples").iterdir()] == ["step-000000003"]


def test_the_saved_lora_is_small_and_chat_renders_with_it(resumed, tiny_dir, capsys):
    out = resumed["straight"]
    tensors = _tensors(out / "decoder" / TUNED_TENSORS)
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    size = (out / "decoder" / TUNED_TENSORS).stat().st_size
    decoder_bytes = sum(f.stat().st_size for f in (tiny_dir / "musicgen").glob("*.safetensors"))
    assert size < 0.1 * decoder_bytes, (size, decoder_bytes)
    info = json.loads((out / "decoder" / TUNED_CONFIG).read_text())
    assert info["tuning"] == "lora" and info["step"] == 6 and info["merge"] is True

    def render(model_dir: Path) -> np.ndarray:
        model = M2UGen.from_pretrained(model_dir)
        music = ChatSession(model).send("a calm piano piece", music="always", seconds=0.5,
                                        seed=3, max_new_tokens=4).music
        return music.waveforms[0]

    base, tuned = render(tiny_dir), render(out)
    assert base.shape == tuned.shape and not np.allclose(base, tuned, atol=1e-4)
    # kept beside the base weights instead of merged: the same music
    info["merge"] = False
    (out / "decoder" / TUNED_CONFIG).write_text(json.dumps(info))
    try:
        assert np.allclose(render(out), tuned, atol=1e-4)
    finally:
        info["merge"] = True
        (out / "decoder" / TUNED_CONFIG).write_text(json.dumps(info))
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "fine-tuned" in shown and "lora" in shown


# ------------------------------------------------------------ data and mistakes


def test_audioldm_metadata_bad_records_and_quality_tags(synth, tiny_dir, tmp_path, capsys):
    names = sorted(p.name for p in (synth / "audio").glob("*.wav"))[:3]
    meta = {"data": [{"wav": names[0], "caption": "a piano", "score": 0.9},
                     {"wav": names[1], "caption": "an organ", "score": 0.1},
                     {"wav": "missing.wav", "caption": "gone", "score": 0.5},
                     {"wav": names[2], "caption": "strings", "score": "high"}]}
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(meta))
    good, bad = read_audio_captions(path, "audioldm", synth / "audio", "score")
    assert [r.caption for r in good] == ["a piano", "an organ"]
    assert [b.index for b in bad] == [2, 3] and "not found" in bad[0].reason
    over = [f"data={path}", "data_format=audioldm", "quality_column=score",
            f"audio_root={synth / 'audio'}", f"model={tiny_dir}", f"out={tmp_path / 'run'}"]
    with pytest.raises(M2UGenError, match=r"meta.json#2 .*missing.wav: audio file not found"):
        train_decoder(load_train_config(None, over, cls=DecoderTrainConfig))
    assert main(["train-decoder", "--config", str(ROOT / "configs" / "decoder_musicgen.yaml"),
                 *over, "lora_rnak=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lora_rnak" in err
    with pytest.raises(ConfigError, match="eval_metrics .*set eval_every"):
        load_train_config(None, [*over, "eval_metrics=true", "eval_every=0"],
                          cls=DecoderTrainConfig)
    with pytest.raises(ConfigError, match="quality_column needs per-clip columns"):
        read_audio_captions(synth / "mucaps.json", "mucaps", synth / "audio", "score")


def test_quality_tags_reach_the_training_captions(synth, tiny_dir, tmp_path):
    from m2ugen.training.decoder_loop import build

    names = sorted(p.name for p in (synth / "audio").glob("*.wav"))[:3]
    meta = {"data": [{"wav": n, "caption": f"clip {i}", "q": s}
                     for i, (n, s) in enumerate(zip(names, [0.9, 0.2, 0.7], strict=True))]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    cfg = _cfg(synth, tmp_path / "run", tiny_dir, data=str(tmp_path / "meta.json"),
               data_format="audioldm", quality_column="q", quality_threshold=0.5, holdout=1)
    _, _, dataset, _, held, _, _ = build(cfg, torch.device("cpu"), 1, 0)
    assert [it["caption"] for it in dataset.items] == ["high quality, clip 0",
                                                       "low quality, clip 1"]
    assert [h.caption for h in held] == ["clip 2"]


def test_a_clip_that_does_not_decode_is_a_bad_record(synth, tiny_dir, tmp_path, caplog):
    names = sorted(p.name for p in (synth / "audio").glob("*.wav"))[:3]
    (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wave file" * 10)
    meta = {"data": [{"wav": str(synth / "audio" / n), "caption": f"clip {i}"}
                     for i, n in enumerate(names)] + [{"wav": "noise.wav", "caption": "x"}]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    kw = dict(data=str(tmp_path / "meta.json"), data_format="audioldm",
              audio_root=str(tmp_path), holdout=0, max_steps=1, batch_size=2)
    with pytest.raises(M2UGenError, match=r"meta.json#3 .*noise.wav: cannot decode"):
        train_decoder(_cfg(synth, tmp_path / "run", tiny_dir, **kw))
    out = train_decoder(_cfg(synth, tmp_path / "run2", tiny_dir, skip_bad=True, **kw))
    assert len(_losses(out)) == 1
    assert "skipping 1 bad record(s)" in caplog.text and "noise.wav" in caplog.text
