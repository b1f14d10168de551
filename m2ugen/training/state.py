"""Training checkpoints (model directory + trainer_state/) and the metrics log.

Every save writes a new `trainer_state/step-N/` (N zero-padded): its files are built in a
hidden `<out>/.trainer_state.step-N.PID-….tmp` directory, each fsynced, and the directory
is renamed to `trainer_state/step-N`. That one rename is the commit (no pointer file to
keep in step with it): a `step-N` directory is always whole, resume takes the highest N,
and the older ones are deleted only after the new one is committed. A crash at
any point therefore leaves the previous step or the new one, never nothing; the next save
removes what a crash left behind. Each state carries its own copy of the trained tensors,
so optimizer, scheduler, RNG, data position and weights always belong to the same step;
`adapter.safetensors` beside `trainer_state/` is what chat and the next stage load.

Runs written before (the files directly in `trainer_state/`, swapped in with two renames)
still resume, including one that crashed between those renames and left its state at
`.trainer_state.old-PID`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from m2ugen.checkpoint import (
    CONFIG_NAME,
    STATE_DIR,
    TRAINED_NAME,
    atomic_path,
    atomic_write_text,
    fsync_dir,
    load_tensors,
    save_tensors,
)
from m2ugen.errors import ConfigError
from m2ugen.safe_load import load_weights_only

__all__ = ["STATE_DIR", "MetricsLog", "SavedState", "find_state", "load_trainer_state",
           "read_trainer_state", "restore_trainer_state", "save_checkpoint"]

_STEP = re.compile(r"^step-(\d+)$")
_FILES = (TRAINED_NAME, "state.pt", "state.json")  # one state, in every layout
_PT_KEYS = ("optimizer", "scheduler", "scaler", "rng")
_JSON_KEYS = ("step", "epoch", "batch", "world")
_FIX = "restore trainer_state/ from a backup or start fresh without --resume"


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(model, out: Path, optim, sched, scaler, step: int, epoch: int,
                    batch: int, rank: int, world: int, cfg,
                    trained: dict[str, torch.Tensor] | None = None,
                    optim_state: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Commit trainer_state/step-N, then write the model directory files (rank 0).

    `trained` and `optim_state` are the full trained tensors and optimizer state when the
    caller gathered them from shards (FSDP); by default the model's and optimizer's own.
    `extra` goes into state.json (strategy, skipped fp16 steps)."""
    rngs = [_rng_state(model.device)]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if rank == 0:
        trained = model.trained_parameters() if trained is None else trained
        out.mkdir(parents=True, exist_ok=True)
        write_state(out, step, trained,
                    {"optimizer": optim.state_dict() if optim_state is None else optim_state,
                     "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "rng": rngs},
                    {"step": step, "epoch": epoch, "batch": batch, "world": world,
                     **(extra or {}), "config": cfg.to_dict()})
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.save_dtype]
        model.write_model_files(out, metadata={"step": str(step), **cfg.file_metadata()},
                                dtype=dtype, tensors=trained)
    if world > 1:
        dist.barrier()


def write_state(out: Path, step: int, tensors: dict[str, torch.Tensor],
                state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Build, fsync and commit `trainer_state/step-N`; then drop what it supersedes."""
    root = out / STATE_DIR
    final = root / f"step-{step:09d}"
    # built beside trainer_state/, so a crash before the first commit leaves no empty one
    build = Path(tempfile.mkdtemp(dir=out, prefix=f".{STATE_DIR}.{final.name}.{os.getpid()}-",
                                  suffix=".tmp"))
    try:
        save_tensors(build / TRAINED_NAME, tensors)  # each file: fsync, rename, fsync dir
        with atomic_path(build / "state.pt") as tmp:
            torch.save(state, tmp)
        atomic_write_text(build / "state.json", json.dumps(meta, indent=2))
        if final.exists():  # only after hand edits: resume always starts from the newest
            aside = root / f".{final.name}.{os.getpid()}-replaced.tmp"
            os.rename(final, aside)
            shutil.rmtree(aside)
        if not root.is_dir():
            root.mkdir()
            fsync_dir(out)
        os.rename(build, final)  # the commit
        fsync_dir(root)
    finally:
        if build.exists():
            shutil.rmtree(build)
    _drop_superseded(out, final)
    return final


def _drop_superseded(out: Path, keep: Path) -> None:
    """Older states, temporaries of crashed saves, and the files of the earlier layout."""
    root = out / STATE_DIR
    for entry in root.iterdir():
        if entry == keep:
            continue
        if (_STEP.match(entry.name) or entry.name.endswith(".tmp")) and entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name in _FILES or entry.name.startswith(tuple(f".{f}." for f in _FILES)):
            entry.unlink()
    # crashed builds, the two-rename swap of earlier versions, crashed model-file writes
    stale = re.compile(rf"^\.{STATE_DIR}\.(step-\d+\..*\.tmp|old-\d+|[a-z0-9_]{{8}}\.tmp)$")
    for entry in out.iterdir():
        if stale.match(entry.name) and entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name.endswith(".tmp") and entry.is_file() and entry.name.startswith(
                (f".{CONFIG_NAME}.", f".{TRAINED_NAME}.")):
            entry.unlink()


def find_state(out: Path) -> Path:
    """The directory holding the state to resume: the newest `step-N`, else the earlier
    layout's files (in `trainer_state/`, or in the `.old` copy a crash left)."""
    root = out / STATE_DIR
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and
                   (m := _STEP.match(p.name))) if root.is_dir() else []
    if steps:
        return steps[-1][1]
    if (root / "state.json").is_file():
        return root
    olds = []
    if out.is_dir():
        for p in out.glob(f".{STATE_DIR}.old-*"):
            try:
                olds.append((int(json.loads((p / "state.json").read_text())["step"]), p))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a whole state: the crash came before it was written
    if olds:
        return max(olds)[1]
    if root.is_dir():
        raise ConfigError(f"{root}: holds no saved state (the run stopped before its first "
                          "checkpoint); remove that directory to start the run fresh")
    raise ConfigError(f"{out}: no {STATE_DIR}/ to resume from; drop --resume to start fresh")


def load_trainer_state(out: Path, optim, sched, scaler, rank: int,
                       device: torch.device, model) -> tuple[int, int, int]:
    """Restore weights, optimizer, scheduler, scaler and RNG; returns (step, epoch, batch).

    The files are read and checked first; a damaged, malicious or foreign one is a
    one-line ConfigError naming it (and the tensor, for tensors).
    """
    saved = read_trainer_state(out)
    model.load_trained(saved.tensors, str(saved.weights))
    return restore_trainer_state(saved, optim, sched, scaler, rank, device)


class SavedState:
    """A checked trainer state: `meta` (state.json), `tensors` (the trained tensors),
    `state` (optimizer, scheduler, scaler, RNG) and the files they came from."""

    def __init__(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                 state: dict[str, Any], weights: Path, pt: Path) -> None:
        self.meta, self.tensors, self.state, self.weights, self.pt = (meta, tensors, state,
                                                                      weights, pt)


def read_trainer_state(out: Path) -> SavedState:
    """Read and check the newest state of `out` (one-line ConfigError naming a bad file)."""
    state_dir = find_state(out)
    meta = _read_meta(state_dir / "state.json")
    weights = state_dir / TRAINED_NAME
    tensors = load_tensors(weights)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"{weights}: tensor {name} holds NaN or infinite values; {_FIX}")
    pt = state_dir / "state.pt"
    state = load_weights_only(pt)  # tensors and plain data only: a pickle runs nothing
    if not isinstance(state, dict) or any(k not in state for k in _PT_KEYS):
        raise ConfigError(f"{pt}: not a trainer state (needs {', '.join(_PT_KEYS)}); {_FIX}")
    return SavedState(meta, tensors, state, weights, pt)


def restore_trainer_state(saved: SavedState, optim, sched, scaler, rank: int,
                          device: torch.device, load_optimizer=None) -> tuple[int, int, int]:
    """Optimizer (through `load_optimizer(state)` when given: FSDP's), scheduler, scaler
    and RNG from a checked state; returns (step, epoch, batch)."""
    state, meta, pt = saved.state, saved.meta, saved.pt
    try:
        (load_optimizer or optim.load_state_dict)(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        if len(rngs) == meta["world"] and rank < len(rngs):
            rng = rngs[rank]
            torch.set_rng_state(rng["torch"])
            random.setstate(_as_tuple(rng["python"]))
            if "cuda" in rng and device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], device)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{pt}: does not fit this run ({reason}); resume with the config "
                          f"the run was started with, or {_FIX}") from e
    return meta["step"], meta["epoch"], meta["batch"]


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: not found; {_FIX}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise ConfigError(f"{path}: not readable JSON ({e}); {_FIX}") from e
    if not isinstance(meta, dict) or not all(
            type(meta.get(k)) is int and meta[k] >= 0 for k in _JSON_KEYS):
        raise ConfigError(f"{path}: needs non-negative integers {', '.join(_JSON_KEYS)}; "
                          f"{_FIX}")
    return meta


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
