"""Training checkpoints (model directory + trainer_state/) and the metrics log.

`trainer_state/` is swapped in whole (atomic directory) and carries its own copy of the
trained tensors, so optimizer, scheduler, RNG, data position and weights always belong
to the same step; `adapter.safetensors` beside it is what chat and the next stage load.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from m2ugen.checkpoint import TRAINED_NAME, atomic_directory, load_tensors, save_tensors
from m2ugen.errors import ConfigError

STATE_DIR = "trainer_state"


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(model, out: Path, optim, sched, scaler, step: int, epoch: int,
                    batch: int, rank: int, world: int, cfg) -> None:
    """Write trainer_state/ (atomically, whole) and the model directory files (rank 0)."""
    rngs = [_rng_state(model.device)]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_directory(out / STATE_DIR) as tmp:
            save_tensors(tmp / TRAINED_NAME, model.trained_parameters())
            torch.save({"optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rngs}, tmp / "state.pt")
            (tmp / "state.json").write_text(json.dumps(
                {"step": step, "epoch": epoch, "batch": batch, "world": world,
                 "config": cfg.to_dict()}, indent=2))
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.save_dtype]
        model.write_model_files(out, metadata={"step": str(step), "stage": str(cfg.stage)},
                                dtype=dtype)
    if world > 1:
        dist.barrier()


def load_trainer_state(out: Path, optim, sched, scaler, rank: int,
                       device: torch.device, model) -> tuple[int, int, int]:
    """Restore weights, optimizer, scheduler, scaler and RNG; returns (step, epoch, batch)."""
    state_dir = out / STATE_DIR
    if not (state_dir / "state.json").is_file():
        raise ConfigError(f"{out}: no {STATE_DIR}/ to resume from; drop --resume to start "
                          "fresh")
    meta = json.loads((state_dir / "state.json").read_text())
    model.load_trained(load_tensors(state_dir / TRAINED_NAME), str(state_dir))
    state = torch.load(state_dir / "state.pt", map_location="cpu", weights_only=True)
    optim.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rngs = state["rng"]
    if len(rngs) == meta["world"] and rank < len(rngs):
        rng = rngs[rank]
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_tuple(rng["python"]))
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
    return int(meta["step"]), int(meta["epoch"]), int(meta["batch"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list) else x


class MetricsLog:
    """`<out>/metrics.jsonl` (one JSON object per logged step) + TensorBoard scalars."""

    def __init__(self, out: Path, enabled: bool, resume: bool, tensorboard: bool = True,
                 resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():  # drop lines logged after the checkpoint
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1
                                        if resume else None)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.writer is not None:
                self.writer.close()
