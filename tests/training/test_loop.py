"""Training stages: learning, DDP equivalence, exact resume, bad records, checkpoints, cache."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.cli import main
from m2ugen.data.batching import collate
from m2ugen.data.synth import write_synthetic_dataset
from m2ugen.errors import M2UGenError
from m2ugen.model import M2UGen
from m2ugen.trained import stage_groups, tensor_group
from m2ugen.training.config import TrainConfig, load_train_config
from m2ugen.training.features import batch_features, batch_music
from m2ugen.training.loop import build, lr_at, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_audio=6,
                                   n_images=3, n_videos=2)


def _cfg(spec: Path, out: Path, tiny_dir: Path, **kw) -> TrainConfig:
    base = dict(stage=1, model=str(tiny_dir), init_trained="standard", data=str(spec),
                out=str(out), max_steps=6, batch_size=4, lr=3e-3, min_lr=1e-4, warmup_steps=2,
                max_len=256, save_every=100, progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_overfitting_one_batch_halves_the_stage1_loss(spec, tiny_dir, tmp_path):
    # four examples, one global batch of four: every step sees the same batch
    captions = json.loads((spec.parent / "mucaps.json").read_text())
    four = dict(list(captions.items())[:4])
    (tmp_path / "four.json").write_text(json.dumps(four))
    one_batch = tmp_path / "one_batch.yaml"
    one_batch.write_text(f"stage1:\n  - {{format: mucaps, file: four.json, "
                         f"root: {spec.parent / 'audio'}}}\n")
    out = train(_cfg(one_batch, tmp_path / "run", tiny_dir, max_steps=30, lr=1e-2,
                     warmup_steps=3, batch_size=4), resume=False)
    losses = _losses(out)
    assert len(losses) == 30
    assert losses[-1] < losses[0] / 2, losses


def test_short_stage1_teaches_the_gates(spec, tiny_dir, tmp_path, media_arrays):
    out = train(_cfg(spec, tmp_path / "run", tiny_dir, max_steps=8), resume=False)
    model = M2UGen.from_pretrained(out)
    assert model.llm.gates.abs().max() > 0  # started at zero (standard init)
    ids = torch.tensor([[1, 50, 60, 70]])
    with_audio = model.forward_logits(ids, audio=media_arrays["audio"])
    assert (with_audio - model.forward_logits(ids)).abs().max() > 1e-4


def test_checkpoint_holds_only_trained_tensors_and_round_trips(spec, tiny_dir, tmp_path):
    out = train(_cfg(spec, tmp_path / "run", tiny_dir, max_steps=3), resume=False)
    model = M2UGen.from_pretrained(out)
    saved = load_file(str(out / TRAINED_NAME))
    assert set(saved) == set(model.trained_parameters())
    state = load_file(str(out / "trainer_state" / "step-000000003" / TRAINED_NAME))
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    for name, p in model.trained_parameters().items():
        assert torch.equal(p.detach(), saved[name].to(p.dtype)), name
    assert json.loads((out / "trainer_state" / "step-000000003" / "state.json").read_text()
                      )["step"] == 3
    assert os.listdir(out / "trainer_state") == ["step-000000003"]  # older states dropped
    # base weights are not copied: the directory is small
    base = sum(f.stat().st_size for f in (tiny_dir / "llm").iterdir())
    assert (out / TRAINED_NAME).stat().st_size < 3 * base


def test_interrupted_and_resumed_equals_uninterrupted(spec, tiny_dir, tmp_path):
    kw = dict(max_steps=8, save_every=3, stage=3, init_trained="keep", batch_size=2)
    full = _losses(train(_cfg(spec, tmp_path / "full", tiny_dir, **kw), resume=False))
    part = tmp_path / "part"
    train(_cfg(spec, part, tiny_dir, stop_after=5, **kw), resume=False)
    assert len(_losses(part)) == 5
    with pytest.raises(M2UGenError, match="--resume"):
        train(_cfg(spec, part, tiny_dir, **kw), resume=False)
    resumed = _losses(train(_cfg(spec, part, tiny_dir, **kw), resume=True))
    assert len(resumed) == 8
    assert resumed == pytest.approx(full, abs=1e-6)


def test_ddp_two_processes_equal_one_process(spec, tiny_dir, tmp_path):
    common = [f"data={spec}", f"model={tiny_dir}", "max_steps=4", "progress=false",
              "tensorboard=false", "init_trained=standard", "stage=1", "save_every=100"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "m2ugen.cli", "train", "--config",
                          str(ROOT / "configs" / "stage1.yaml"), *common, "batch_size=4",
                          f"out={tmp_path / 'one'}"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "m2ugen.cli", "train", "--config",
                          str(ROOT / "configs" / "stage1.yaml"), *common, "batch_size=2",
                          f"out={tmp_path / 'two'}"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-4)


def test_bad_records_are_reported_and_skip_bad_counts_them(spec, tiny_dir, tmp_path, capsys,
                                                           caplog):
    data = json.loads((spec.parent / "mucaps.json").read_text())
    data["missing_clip.wav"] = "A lost song."
    (spec.parent / "mucaps_bad.json").write_text(json.dumps(data))
    bad_spec = spec.parent / "bad.yaml"
    bad_spec.write_text(spec.read_text().replace("mucaps.json", "mucaps_bad.json"))
    args = ["train", "--config", str(ROOT / "configs" / "stage1.yaml"), f"data={bad_spec}",
            f"model={tiny_dir}", f"out={tmp_path / 'bad'}", "max_steps=1", "warmup_steps=0",
            "progress=false",
            "tensorboard=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "mucaps_bad.json#" in err and "missing_clip.wav" in err and "--skip-bad" in err
    assert err.count("\n") == 1
    assert main([*args, "skip_bad=true"]) == 0
    assert "1 bad record" in caplog.text


def test_feature_cache_gives_the_same_losses(spec, tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    kw = dict(max_steps=4, stage=2, init_trained="keep")
    assert main(["cache-features", "--config", str(ROOT / "configs" / "stage2.yaml"),
                 f"data={spec}", f"model={tiny_dir}", f"feature_cache={cache}",
                 "progress=false"]) == 0
    index = json.loads((cache / "index.json").read_text())
    assert any(k.startswith("target-") for k in index)
    live = _losses(train(_cfg(spec, tmp_path / "live", tiny_dir, **kw), resume=False))
    cached = _losses(train(_cfg(spec, tmp_path / "cached", tiny_dir, feature_cache=str(cache),
                                **kw), resume=False))
    assert cached == pytest.approx(live, rel=1e-5)
    # resumable: a second run finds everything cached and adds nothing
    before = sorted(p.name for p in cache.iterdir())
    assert main(["cache-features", "--config", str(ROOT / "configs" / "stage2.yaml"),
                 f"data={spec}", f"model={tiny_dir}", f"feature_cache={cache}",
                 "progress=false"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == before


def test_schedule_and_config_errors(tmp_path):
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-6)
    assert lr_at(100, cfg) == pytest.approx(1e-5)
    for warmup in (10, 11):  # the cosine ends at min_lr, even when it is one step long
        short = TrainConfig(max_steps=12, warmup_steps=warmup, lr=1e-3, min_lr=1e-5)
        assert lr_at(12, short) == pytest.approx(1e-5)
        assert lr_at(warmup - 1, short) == pytest.approx(1e-3)
    with pytest.raises(M2UGenError, match="unknown settings colour"):
        load_train_config(ROOT / "configs" / "stage1.yaml", ["colour=red"])
    with pytest.raises(M2UGenError, match="key=value"):
        load_train_config(ROOT / "configs" / "stage1.yaml", ["max_steps"])
    cfg = load_train_config(ROOT / "configs" / "stage2.yaml", ["max_steps=7", "lr=2e-4"])
    assert (cfg.stage, cfg.max_steps, cfg.lr) == (2, 7, 2e-4)


def test_gradient_checkpointing_gives_the_same_losses(spec, tiny_dir, tmp_path):
    """Checkpointed layers recompute in backward with the same injected prompts."""
    kw = dict(max_steps=3, stage=1)
    plain = _losses(train(_cfg(spec, tmp_path / "plain", tiny_dir, **kw), resume=False))
    ckpt = _losses(train(_cfg(spec, tmp_path / "ckpt", tiny_dir, gradient_checkpointing=True,
                              **kw), resume=False))
    assert ckpt == pytest.approx(plain, rel=1e-5)


def test_bf16_model_directory_is_half_the_size(spec, tiny_dir, tmp_path):
    fp32 = train(_cfg(spec, tmp_path / "fp32", tiny_dir, max_steps=1, warmup_steps=0),
                 resume=False)
    bf16 = train(_cfg(spec, tmp_path / "bf16", tiny_dir, max_steps=1, warmup_steps=0,
                      save_dtype="bf16"), resume=False)
    a, b = load_file(str(fp32 / TRAINED_NAME)), load_file(str(bf16 / TRAINED_NAME))
    assert all(t.dtype == torch.bfloat16 for t in b.values())
    assert all(torch.equal(a[k].to(torch.bfloat16), b[k]) for k in a)
    assert (bf16 / TRAINED_NAME).stat().st_size < 0.55 * (fp32 / TRAINED_NAME).stat().st_size
    # resume state stays fp32 and the bf16 directory loads for chat
    state = load_file(str(bf16 / "trainer_state" / "step-000000001" / TRAINED_NAME))
    assert all(t.dtype == torch.float32 for t in state.values())
    assert M2UGen.from_pretrained(bf16).dtype == torch.float32


def test_mixed_precision_path_runs_on_cpu_bf16(spec, tiny_dir, tmp_path):
    """The GPU recipe (bf16 frozen weights, fp32 trained tensors, bf16 autocast) on the CPU:
    stage 2 with music targets trains, stays finite and saves fp32 trained tensors."""
    out = train(_cfg(spec, tmp_path / "bf16", tiny_dir, stage=2, init_trained="keep",
                     max_steps=3, warmup_steps=1, precision="bf16"), resume=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert any(r["mse"] > 0 for r in rows)  # music targets went through the projector
    saved = load_file(str(out / TRAINED_NAME))
    assert all(t.dtype == torch.float32 for t in saved.values())


def test_training_never_overwrites_a_model_directory(spec, tiny_dir, tmp_path):
    before = (tiny_dir / TRAINED_NAME).read_bytes()
    with pytest.raises(M2UGenError, match="not a training run"):
        train(_cfg(spec, tiny_dir, tiny_dir, max_steps=1, warmup_steps=0), resume=False)
    assert (tiny_dir / TRAINED_NAME).read_bytes() == before


def test_the_decoder_loads_only_for_music_targets(spec, tiny_dir, tmp_path):
    """Stage 1 (captions: text answers) never loads the music decoder; stage 2 (music
    answers, whose targets the decoder computes) does."""
    cpu = torch.device("cpu")
    model, *_ = build(_cfg(spec, tmp_path / "s1", tiny_dir, stage=1), cpu, 1, 0)
    assert not model.has_decoder
    model, *_ = build(_cfg(spec, tmp_path / "s2", tiny_dir, stage=2), cpu, 1, 0)
    assert model.has_decoder


def test_the_logged_loss_is_the_cross_entropy_per_supervised_token(spec, tiny_dir, tmp_path):
    """Step 1 logs the batch's cross-entropy per supervised token, computed by hand on the
    same initial model and batch. (Adam trains alike on any scale of the loss, so only the
    logged value shows a sum, or a sum times the count.)"""
    cfg = _cfg(spec, tmp_path / "run", tiny_dir, max_steps=1, batch_size=4, log_every=1)
    model, dataset, sampler, _ = build(cfg, torch.device("cpu"), 1, 0)
    sampler.set_position(0, 0)
    first = next(iter(sampler))
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = collate([dataset[i] for i in first], pad_id=pad)
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["labels"],
                    batch_features(model, batch), **batch_music(model, batch))
    want = float(out["ce_sum"] / out["ce_count"])
    run = train(cfg, resume=False)
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["ce"] == pytest.approx(want, rel=1e-5)
    assert logged["loss"] == pytest.approx(logged["ce"] + logged["mse"])


def test_fp16_with_a_gradient_scaler_skips_an_overflow_and_resumes_its_scale(spec, tiny_dir,
                                                                          tmp_path, caplog):
    """precision=fp16 (the V100 recipe) on the CPU: stage 2 trains with finite losses; a
    step whose backward overflows (the loss times inf before backward, at steps 1 and 3)
    is skipped by the scaler, which halves the scale, and counted; the scale and the count
    are saved and a resumed run goes on from them (a fresh scaler would start at 65536)."""
    kw = dict(stage=2, init_trained="keep", max_steps=3, warmup_steps=1, precision="fp16",
              save_every=100)
    caplog.set_level(logging.INFO, logger="m2ugen")
    out = tmp_path / "run"
    before = load_file(str(tiny_dir / TRAINED_NAME))
    train(_cfg(spec, out, tiny_dir, stop_after=2, **kw), overflow_steps={1, 3})
    assert "precision fp16 (precision=fp16): fp16 autocast + gradient scaler" in caplog.text
    assert "step 1: fp16 gradients overflowed" in caplog.text
    state_dir = out / "trainer_state" / "step-000000002"
    scale = torch.load(state_dir / "state.pt", weights_only=True)["scaler"]["scale"]
    skipped = json.loads((state_dir / "state.json").read_text())["skipped_steps"]
    assert scale <= 65536 / 2 and skipped >= 1
    # the projector trained in step 2 (step 1 was skipped: nothing moved then)
    after = load_file(str(state_dir / TRAINED_NAME))
    assert not torch.equal(before["projector.out.weight"], after["projector.out.weight"])
    train(_cfg(spec, out, tiny_dir, **kw), resume=True, overflow_steps={1, 3})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rows) and all(r["mse"] > 0 for r in rows)
    assert rows[0]["skipped"] and rows[0]["loss_scale"] == 65536 / 2
    assert rows[2]["skipped"] and rows[2]["grad_norm"] is None
    assert rows[2]["loss_scale"] == scale / 2  # from the saved scale, not a fresh one
    assert rows[2]["skipped_steps"] == skipped + 1
    assert "step 3: fp16 gradients overflowed" in caplog.text


def test_extra_groups_train_the_projector_in_stage3(spec, tiny_dir, tmp_path):
    """`extra_groups=[projector]`: stage 3 (music requests in its data) moves the output
    projector, which its own set leaves as it was; an unknown group is refused."""
    start = load_file(str(tiny_dir / TRAINED_NAME))
    moved = {}
    for extra in ([], ["projector"]):
        out = train(_cfg(spec, tmp_path / f"s3-{len(extra)}", tiny_dir, stage=3,
                         init_trained="keep", max_steps=3, warmup_steps=0,
                         extra_groups=extra), resume=False)
        after = load_file(str(out / TRAINED_NAME))
        moved[tuple(extra)] = {k for k in after if not torch.equal(after[k], start[k])}
    assert not any(k.startswith("projector.") for k in moved[()])
    assert any(k.startswith("projector.") for k in moved[("projector",)])
    assert moved[()] and moved[()] <= moved[("projector",)]  # the stage's own set trained
    with pytest.raises(M2UGenError, match="unknown groups colour"):
        load_train_config(ROOT / "configs" / "stage3.yaml", ["extra_groups=[colour]"])
    assert load_train_config(ROOT / "configs" / "stage3.yaml",
                             ["extra_groups=[projector]"]).extra_groups == ["projector"]


def test_frozen_groups_leave_the_llm_as_it_was_in_stage2(spec, tiny_dir, tmp_path):
    """`frozen_groups=[lora, bias, norm, prefix_query]`: stage 2 trains only the projector
    and the [AUD] rows; every frozen tensor is saved bit-identical to the stage's start.
    Naming a group both ways, or freezing the whole set, is refused."""
    frozen = ["lora", "bias", "norm", "prefix_query"]
    start = load_file(str(tiny_dir / TRAINED_NAME))
    out = train(_cfg(spec, tmp_path / "s2", tiny_dir, stage=2, init_trained="keep",
                     max_steps=3, warmup_steps=0, frozen_groups=frozen), resume=False)
    after = load_file(str(out / TRAINED_NAME))
    moved = {tensor_group(k) for k in after if not torch.equal(after[k], start[k])}
    assert moved == {"projector", "new_tokens"}, moved
    assert stage_groups(2, (), frozen) == {"projector", "new_tokens"}
    with pytest.raises(M2UGenError, match="trained or frozen, not both"):
        load_train_config(ROOT / "configs" / "stage3.yaml",
                          ["extra_groups=[projector]", "frozen_groups=[projector]"])
    with pytest.raises(M2UGenError, match="freezes every group stage 2 trains"):
        load_train_config(ROOT / "configs" / "stage2.yaml", [
            "frozen_groups=[lora, bias, norm, prefix_query, projector, new_tokens]"])
    with pytest.raises(M2UGenError, match="unknown groups colour"):
        load_train_config(ROOT / "configs" / "stage2.yaml", ["frozen_groups=[colour]"])
    with pytest.raises(M2UGenError, match="stage 2 does not train gates"):
        load_train_config(ROOT / "configs" / "stage2.yaml", ["frozen_groups=[gates]"])
