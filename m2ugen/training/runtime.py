"""What every trainer here shares — the three stages (`loop.py`) and the decoder fine-tune
(`decoder_loop.py`): process-group setup, the precision choice, the lr schedule, the
global-count all-reduce, one optimizer step (clip, fp16 scaler, skip accounting), the
resumable batch stream and the progress bar. Each trainer keeps only what is its own:
what a batch is and how its loss is computed.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from m2ugen.data.batching import ResumableBatchSampler
from m2ugen.loading import default_dtype
from m2ugen.training.parallel import as_float

log = logging.getLogger(__name__)


class Schedule(Protocol):
    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int
    precision: str


def lr_at(step: int, cfg: Schedule) -> float:
    """Linear warmup, then a half-cycle cosine from lr to min_lr (per optimizer step)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def dist_setup() -> tuple[int, int, int]:
    """(world, rank, local rank) from torchrun's environment; the process group is made
    when there are several ranks (NCCL on GPUs, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return world, rank, local


def autocast_dtype(cfg: Schedule, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU has it, fp16 (+ grad scaler) on older GPUs, none
    (fp32) on the CPU unless bf16 or fp16 is asked for (CPU autocast computes both; fp16
    there is how the V100 recipe, scaler and all, is tested without a GPU)."""
    if cfg.precision == "fp32" or (device.type != "cuda" and cfg.precision == "auto"):
        return None
    if cfg.precision == "auto":  # the GPU's half type, chosen in one place for every face
        return default_dtype(device)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def precision_note(cfg: Schedule, autocast: torch.dtype | None,
                   device: torch.device) -> str:
    """The log line saying which precision runs, and why."""
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast]
    how = ("no autocast" if autocast is None else f"{name} autocast"
           + (" + gradient scaler" if autocast is torch.float16 else ""))
    why = f"precision={cfg.precision}" + (f" on {device.type}" if cfg.precision == "auto"
                                          else "")
    return (f"precision {name} ({why}): {how}; frozen weights {name}, trained tensors "
            f"fp32")


def all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """Sum over ranks in place (no-op on one process)."""
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def batch_stream(dataset: Dataset, sampler: ResumableBatchSampler, epoch: int, position: int,
                 num_workers: int, collate_fn: Callable[[list[Any]], Any],
                 ) -> Iterator[tuple[int, int, Any]]:
    """(epoch, batch index, batch) forever, starting at the saved data position."""
    while True:
        sampler.set_position(epoch, position)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                            collate_fn=collate_fn)
        for k, batch in enumerate(loader, start=position):
            yield epoch, k, batch
        epoch, position = epoch + 1, 0


def next_position(micro: list[tuple[int, int, Any]], sampler: ResumableBatchSampler,
                  ) -> tuple[int, int]:
    """(epoch, batch) where the data resumes after the micro-batches just used."""
    ep, k, _ = micro[-1]
    return (ep, k + 1) if k + 1 < len(sampler) else (ep + 1, 0)


class StepResult:
    """What one optimizer step reports: gradient norm (None: not clipped or not finite),
    the lr it ran at, whether fp16's scaler skipped it."""

    def __init__(self, grad_norm: float | None, lr: float, skipped: bool) -> None:
        self.grad_norm, self.lr, self.skipped = grad_norm, lr, skipped


def optimizer_step(optim: torch.optim.Optimizer, sched, scaler: torch.amp.GradScaler,
                   params: list[torch.nn.Parameter], clip: float, step: int, rank: int,
                   skipped_so_far: int) -> StepResult:
    """Unscale, clip, step (skipped by the scaler on inf/NaN fp16 gradients), zero the
    gradients and advance the schedule; a skipped step is logged (it still counts)."""
    with warnings.catch_warnings():
        # torch's ShardedGradScaler hands its (1,)-shaped found_inf to the DTensor op of
        # FSDP2's gradients, which warns once per step that it replicates it: torch's own
        # pairing, right as it is (the step is skipped on every rank alike), and nothing a
        # user can change; it buried the training log under a warning per step
        warnings.filterwarnings("ignore", "Found a non-scalar tensor with numel=1",
                                UserWarning)
        scaler.unscale_(optim)
    grad_norm = as_float(torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else None)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optim)  # skipped when a gradient is inf/NaN (fp16 only)
    scaler.update()
    skipped = scale is not None and scaler.get_scale() < scale
    if skipped and rank == 0:
        log.warning("step %d: fp16 gradients overflowed (inf/NaN); optimizer step "
                    "skipped, loss scale %g -> %g (%d skipped so far)", step + 1,
                    scale, scaler.get_scale(), skipped_so_far + 1)
    optim.zero_grad(set_to_none=True)
    lr = sched.get_last_lr()[0]
    with warnings.catch_warnings():
        if skipped:  # torch warns when the first optimizer step was skipped: logged above
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
        sched.step()
    finite = grad_norm if grad_norm is not None and math.isfinite(grad_norm) else None
    return StepResult(finite, lr, skipped)


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                dynamic_ncols=True)
