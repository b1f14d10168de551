"""The three training stages: one entry point, stages differ by config (STYLE.md §4).

    m2ugen train --config configs/stage1.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node N -m m2ugen.cli train --config ...   (DDP; NCCL/gloo)

Loss = CE on response tokens + MSE(projector, 10 × decoder target) for music responses,
each normalised by its global count (all ranks, all accumulation micro-batches), so an
N-process run computes the same update as one process with the same global batch.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from m2ugen.data.batching import ResumableBatchSampler, collate
from m2ugen.data.cache import FeatureCache
from m2ugen.data.dataset import TrainDataset
from m2ugen.data.spec import collect, load_spec
from m2ugen.errors import ConfigError
from m2ugen.loading import default_dtype
from m2ugen.model import M2UGen
from m2ugen.training.config import TrainConfig
from m2ugen.training.features import batch_features, batch_music, needs_decoder, train_device
from m2ugen.training.state import STATE_DIR, MetricsLog, load_trainer_state, save_checkpoint

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then a half-cycle cosine from lr to min_lr (per optimizer step)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def _dist_setup() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return world, rank, local


def _precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU has it, fp16 (+ grad scaler) on older GPUs, none
    (fp32) on the CPU unless bf16 is asked for explicitly (CPU autocast supports bf16)."""
    if cfg.precision == "fp32" or (device.type != "cuda" and cfg.precision == "auto"):
        return None
    if device.type != "cuda" and cfg.precision == "fp16":
        raise ConfigError("precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if cfg.precision == "auto":  # the GPU's half type, chosen in one place for every face
        return default_dtype(device)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def _all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def build(cfg: TrainConfig, device: torch.device, world: int, rank: int):
    """Model (stage trainable set applied), dataset and sampler."""
    autocast = _precision(cfg, device)
    frozen_dtype = autocast or torch.float32
    # the data first: a bad record costs a second, not a model load
    spec = load_spec(cfg.data)
    examples = collect(spec, f"stage{cfg.stage}", skip_bad=cfg.skip_bad)
    if not examples:
        raise ConfigError(f"{cfg.data}: stage{cfg.stage} has no examples")
    # the decoder only computes music targets: loaded when some example has one
    model = M2UGen.from_pretrained(cfg.model, device=device, dtype=frozen_dtype,
                                   trust_remote_code=cfg.trust_remote_code,
                                   decoder=needs_decoder(examples))
    if cfg.init_trained == "standard":
        model.reset_trained(cfg.seed)
    n_trainable = model.set_stage(cfg.stage)
    # every trained tensor stays fp32 (autocast computes in bf16/fp16): the ones this stage
    # trains are master weights, the others (e.g. stage-1 adapters in stage 2) are saved
    # again and must not lose precision on the way through a bf16 model
    for p in model.trained_parameters().values():
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        model.llm.model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    cache = FeatureCache(cfg.feature_cache) if cfg.feature_cache else None
    if cache is not None and len(cache) == 0:
        log.warning("feature cache %s is empty; run `m2ugen cache-features --config ...`",
                    cfg.feature_cache)
    dataset = TrainDataset(examples, model, cfg.max_len, cache)
    sampler = ResumableBatchSampler(dataset.lengths, cfg.batch_size, world, rank, cfg.seed,
                                    cfg.group_by_length)
    if rank == 0:
        total = sum(p.numel() for p in model.parameters())
        log.info("stage %d: %s trainable parameters of %s (%.3f%%); %d examples; global "
                 "batch %d", cfg.stage, f"{n_trainable:,}", f"{total:,}",
                 100 * n_trainable / total, len(dataset),
                 cfg.batch_size * world * cfg.grad_accum)
    return model, dataset, sampler, autocast


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Run one stage; returns the output model directory."""
    out = Path(cfg.out)
    if not resume and (out / STATE_DIR).exists():
        raise ConfigError(f"{out} holds a training run already; pass --resume to continue it "
                          "or choose another out=")
    if not resume and (out / "m2ugen.json").exists():  # never overwrite someone's model
        raise ConfigError(f"{out} holds a model directory that is not a training run; "
                          "choose another out= (the model to start from goes in model=)")
    world, rank, local = _dist_setup()
    device = train_device(cfg, local)
    torch.manual_seed(cfg.seed + rank)  # a seed per rank
    model, dataset, sampler, autocast = build(cfg, device, world, rank)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=cfg.lr, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_at(s, cfg) / cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast is torch.float16)
    step, epoch, batch_pos = 0, 0, 0
    if resume:
        step, epoch, batch_pos = load_trainer_state(out, optim, sched, scaler, rank, device,
                                                    model)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", out, step, epoch, batch_pos)

    net = model
    if world > 1:
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
        net = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda"
                                      else None, find_unused_parameters=True)
    metrics = MetricsLog(out, enabled=rank == 0, resume=resume, tensorboard=cfg.tensorboard,
                         resume_step=step)
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else model.tokenizer.eos_token_id

    def batches(epoch: int, position: int):
        """(epoch, batch index, batch) forever, starting at the saved data position."""
        while True:
            sampler.set_position(epoch, position)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                collate_fn=partial(collate, pad_id=pad))
            for k, batch in enumerate(loader, start=position):
                yield epoch, k, batch
            epoch, position = epoch + 1, 0

    stream = batches(epoch, batch_pos)
    start_step = step
    model.train()
    progress = _progress(cfg, step, rank)
    t_last, seen = time.perf_counter(), 0
    while step < cfg.max_steps:
        micro = [next(stream) for _ in range(cfg.grad_accum)]
        loss_ce, loss_mse = _step(model, net, micro, world, autocast, scaler, device)
        scaler.unscale_(optim)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip) if cfg.clip > 0 else None
        scaler.step(optim)
        scaler.update()
        optim.zero_grad(set_to_none=True)
        lr = sched.get_last_lr()[0]
        sched.step()
        step += 1
        ep, k, _ = micro[-1]
        epoch, batch_pos = (ep, k + 1) if k + 1 < len(sampler) else (ep + 1, 0)
        seen += cfg.batch_size * world * cfg.grad_accum
        loss = loss_ce + loss_mse
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            rate = seen / (now - t_last)
            t_last, seen = now, 0
            metrics.write(step, {"loss": loss, "ce": loss_ce, "mse": loss_mse, "lr": lr,
                                 "grad_norm": float(grad_norm) if grad_norm is not None
                                 else None, "samples_per_s": rate, "epoch": epoch})
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        stopping = cfg.stop_after is not None and step >= start_step + cfg.stop_after
        if step % cfg.save_every == 0 or step == cfg.max_steps or stopping:
            save_checkpoint(model, out, optim, sched, scaler, step, epoch, batch_pos, rank,
                            world, cfg)
        if stopping:
            log.info("stopping at step %d of %d (stop_after=%d); continue with --resume",
                     step, cfg.max_steps, cfg.stop_after)
            break
    progress.close()
    metrics.close()
    if world > 1:
        dist.barrier()
    return out


def _step(model, net, micro, world, autocast, scaler, device) -> tuple[float, float]:
    """Forward/backward over the accumulation micro-batches with global normalisation."""
    prepared = []
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for _, _, batch in micro:
        with torch.no_grad():
            feats = batch_features(model, batch)
            music = batch_music(model, batch)
        ids = batch["input_ids"].to(device)
        labels = batch["labels"].to(device)
        counts[0] += (labels[:, 1:] != -100).sum()
        if music:
            counts[1] += music["music_mask"].sum()
        prepared.append((ids, batch["attention_mask"].to(device), labels, feats, music))
    counts = _all_sum(counts, world)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for i, (ids, mask, labels, feats, music) in enumerate(prepared):
        sync = i == len(prepared) - 1 or world == 1
        ctx = net.no_sync() if not sync and hasattr(net, "no_sync") else nullcontext()
        with ctx, torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = net(ids, mask, labels, feats, **music)
            ce = out["ce_sum"] / counts[0].clamp(min=1)
            mse = out["mse_sum"] / counts[1].clamp(min=1)
            # DDP averages gradients over ranks; the sums are global, so undo the mean
            scaler.scale((ce + mse) * world).backward()
        totals += torch.stack([ce.detach().double(), mse.detach().double()])
    totals = _all_sum(totals, world)
    return float(totals[0]), float(totals[1])


def _progress(cfg: TrainConfig, step: int, rank: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.max_steps, initial=step, disable=rank != 0 or not cfg.progress,
                desc=f"stage {cfg.stage}", unit="step", dynamic_ncols=True)
