"""Strategies and memory options: FSDP (2 gloo processes) = one process, interrupted or
not; gradient accumulation = a batch k times larger; options a machine cannot run are
refused in one line before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.data.synth import write_synthetic_dataset
from m2ugen.errors import M2UGenError
from m2ugen.model import M2UGen
from m2ugen.training.config import TrainConfig, load_train_config
from m2ugen.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
# 3 steps: one epoch of the 14 stage-1 examples at a global batch of 4, however it is split
STEPS = 3


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_audio=6,
                                   n_images=3, n_videos=2)


def _cfg(spec: Path, out: Path, tiny_dir: Path, **kw) -> TrainConfig:
    base = dict(stage=1, model=str(tiny_dir), init_trained="standard", data=str(spec),
                out=str(out), max_steps=STEPS, batch_size=4, lr=3e-3, min_lr=1e-4,
                warmup_steps=1, max_len=256, save_every=100, group_by_length=False,
                progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_batch_of_4(spec, tiny_dir, tmp_path_factory) -> Path:
    """The reference: one process, batch 4, no accumulation."""
    return train(_cfg(spec, tmp_path_factory.mktemp("ref") / "run", tiny_dir))


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a / TRAINED_NAME)), load_file(str(b / TRAINED_NAME))
    assert set(x) == set(y)
    for k in x:
        assert torch.allclose(x[k], y[k], atol=1e-4), k


def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(spec, tiny_dir,
                                                                     tmp_path, one_batch_of_4):
    out = train(_cfg(spec, tmp_path / "accum", tiny_dir, batch_size=2, grad_accum=2))
    assert _losses(out) == pytest.approx(_losses(one_batch_of_4), abs=1e-5)
    _same_tensors(out, one_batch_of_4)


def test_fsdp_two_processes_interrupted_and_resumed_equal_one_process(spec, tiny_dir,
                                                                     tmp_path, one_batch_of_4):
    """2 gloo ranks × batch 1 × grad_accum 2, FSDP2, stopped after step 1 and resumed:
    the losses and the gathered adapter.safetensors (trained tensors only, the same names
    as one process writes) equal one uninterrupted process at batch 4. Each rank's
    micro-batches hold different modalities, so every adapter and FSDP collective is
    exercised."""
    out = tmp_path / "fsdp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc_per_node", "2", "-m", "m2ugen.cli", "train", "--config",
              str(ROOT / "configs" / "stage1.yaml"), f"data={spec}", f"model={tiny_dir}",
              f"max_steps={STEPS}", "progress=false", "tensorboard=false",
              "init_trained=standard", "save_every=100", "group_by_length=false", "lr=3e-3",
              "min_lr=1e-4", "warmup_steps=1", "batch_size=1", "grad_accum=2",
              "strategy=fsdp", f"out={out}"]
    for extra in (["stop_after=1"], ["--resume"]):
        run = subprocess.run([*launch, *extra], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    assert "strategy fsdp: 4 LLM layers + the rest sharded over 2 ranks" in run.stderr
    assert "resumed from" in run.stderr
    assert _losses(out) == pytest.approx(_losses(one_batch_of_4), abs=1e-4)
    _same_tensors(out, one_batch_of_4)
    saved = load_file(str(out / TRAINED_NAME))
    assert set(saved) == set(M2UGen.from_pretrained(out, decoder=False).trained_parameters())
    state = next((out / "trainer_state").iterdir())
    assert json.loads((state / "state.json").read_text())["strategy"] == "fsdp"


def test_options_this_machine_cannot_run_are_one_line(spec, tmp_path):
    """On the CPU: the 8-bit optimizer and CPU offload say why and what to use, before the
    model is read (it does not exist here); offload without FSDP and a mismatched
    strategy on resume likewise."""
    missing = tmp_path / "no-model"
    with pytest.raises(M2UGenError, match="optimizer=adamw8bit .* CUDA GPUs only; this run "
                                          "is on cpu: use optimizer=adamw"):
        train(_cfg(spec, tmp_path / "a", missing, optimizer="adamw8bit", device="cpu"))
    with pytest.raises(M2UGenError, match="cpu_offload=true .* this run is on cpu already"):
        train(_cfg(spec, tmp_path / "b", missing, strategy="fsdp", cpu_offload=True,
                   device="cpu"))
    with pytest.raises(M2UGenError, match="CPU offload is an FSDP option; add strategy=fsdp"):
        load_train_config(ROOT / "configs" / "stage1.yaml", ["cpu_offload=true"])
    with pytest.raises(M2UGenError, match="strategy .* 'zero3': use ddp or fsdp"):
        load_train_config(ROOT / "configs" / "stage1.yaml", ["strategy=zero3"])


def test_resuming_with_another_strategy_is_refused(spec, tiny_dir, tmp_path, one_batch_of_4):
    with pytest.raises(M2UGenError, match="saved with strategy=ddp; resume with that"):
        train(_cfg(spec, one_batch_of_4, tiny_dir, strategy="fsdp"), resume=True)


def test_the_stage_script_trains_fsdp_fp16_with_accumulation_on_two_cpu_ranks(spec, tiny_dir,
                                                                            tmp_path):
    """The V100-and-many-GPUs line, `NPROC=2 ./train_stage1.sh strategy=fsdp precision=fp16
    grad_accum=2`, on 2 gloo ranks: it says which precision and sharding ran, logs finite
    losses with the loss scale, and its log is not buried under torch's per-step warning
    about the scaler's found_inf (the unscale hands FSDP2's DTensor gradients a (1,)
    tensor)."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "NPROC": "2",
           "DATA": str(spec), "MODEL": str(tiny_dir), "OUT": str(out),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run([str(ROOT / "train_stage1.sh"), "strategy=fsdp", "precision=fp16",
                          "grad_accum=2", "batch_size=1", "max_steps=2", "warmup_steps=0",
                          "progress=false", "tensorboard=false", "init_trained=standard"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "precision fp16 (precision=fp16): fp16 autocast + gradient scaler" in run.stderr
    assert "strategy fsdp: 4 LLM layers + the rest sharded over 2 ranks" in run.stderr
    assert "Found a non-scalar tensor" not in run.stderr and "Warning" not in run.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["loss_scale"] > 0 for r in rows)
