"""The three training stages: one entry point, stages differ by config (STYLE.md §4).

    m2ugen train --config configs/stage1.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node N -m m2ugen.cli train --config ...   (DDP; NCCL/gloo)
    ... strategy=fsdp precision=fp16 grad_accum=N       (FSDP2; fp16 + gradient scaler)

Loss = CE on response tokens + MSE(projector, 10 × decoder target) for music responses,
each normalised by its global count (all ranks, all accumulation micro-batches), so an
N-process run computes the same update as one process with the same global batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from m2ugen.config import MODALITIES
from m2ugen.data.batching import ResumableBatchSampler, collate
from m2ugen.data.cache import FeatureCache
from m2ugen.data.dataset import TrainDataset
from m2ugen.data.spec import collect, load_spec
from m2ugen.errors import ConfigError
from m2ugen.model import M2UGen
from m2ugen.training.config import TrainConfig
from m2ugen.training.features import batch_features, batch_music, needs_decoder, train_device
from m2ugen.training.parallel import (
    barrier,
    check_hardware,
    full_trained,
    load_optimizer_state,
    make_optimizer,
    make_scaler,
    optimizer_state,
    wrap,
)
from m2ugen.training.runtime import (
    all_sum,
    autocast_dtype,
    batch_stream,
    dist_setup,
    lr_at,
    next_position,
    optimizer_step,
    precision_note,
    progress_bar,
)
from m2ugen.training.state import (
    STATE_DIR,
    MetricsLog,
    read_trainer_state,
    restore_trainer_state,
    save_checkpoint,
)

log = logging.getLogger(__name__)


def build(cfg: TrainConfig, device: torch.device, world: int, rank: int):
    """Model (stage trainable set applied), dataset and sampler."""
    autocast = autocast_dtype(cfg, device)
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
    n_trainable = model.set_stage(cfg.stage, cfg.extra_groups, cfg.frozen_groups)
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


def train(cfg: TrainConfig, resume: bool = False, *,
          overflow_steps: Collection[int] = ()) -> Path:
    """Run one stage; returns the output model directory.

    `overflow_steps`: optimizer steps (1-based, as logged) whose backward runs on the loss
    times inf, as an fp16 overflow does: the gradient scaler must skip them (a test hook;
    the logged loss stays the true one)."""
    out = Path(cfg.out)
    if not resume and (out / STATE_DIR).exists():
        raise ConfigError(f"{out} holds a training run already; pass --resume to continue it "
                          "or choose another out=")
    if not resume and (out / "m2ugen.json").exists():  # never overwrite someone's model
        raise ConfigError(f"{out} holds a model directory that is not a training run; "
                          "choose another out= (the model to start from goes in model=)")
    world, rank, local = dist_setup()
    device = train_device(cfg, local)
    check_hardware(cfg, device, world)
    saved = read_trainer_state(out) if resume else None  # a bad state costs no model load
    if saved is not None and saved.meta.get("strategy", "ddp") != cfg.strategy:
        raise ConfigError(f"{saved.pt.parent}: saved with strategy="
                          f"{saved.meta.get('strategy', 'ddp')}; resume with that strategy")
    torch.manual_seed(cfg.seed + rank)  # a seed per rank
    model, dataset, sampler, autocast = build(cfg, device, world, rank)
    if rank == 0:
        log.info("%s", precision_note(cfg, autocast, device))
    if saved is not None:  # whole tensors go in before sharding
        model.load_trained(saved.tensors, str(saved.weights))
    net = wrap(model, cfg, world, device)
    params = [p for p in model.parameters() if p.requires_grad]  # shards under FSDP
    optim = make_optimizer(cfg, params)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_at(s, cfg) / cfg.lr)
    scaler = make_scaler(cfg, autocast, device, world)
    step, epoch, batch_pos, skipped_total = 0, 0, 0, 0
    if saved is not None:
        step, epoch, batch_pos = restore_trainer_state(
            saved, optim, sched, scaler, rank, device,
            partial(load_optimizer_state, model, optim, cfg=cfg))
        skipped_total = int(saved.meta.get("skipped_steps", 0))
        log.info("resumed from %s at step %d (epoch %d, batch %d)", out, step, epoch, batch_pos)

    metrics = MetricsLog(out, enabled=rank == 0, resume=resume, tensorboard=cfg.tensorboard,
                         resume_step=step)
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else model.tokenizer.eos_token_id

    stream = batch_stream(dataset, sampler, epoch, batch_pos, cfg.num_workers,
                          partial(collate, pad_id=pad))
    start_step = step
    model.train()
    progress = progress_bar(cfg.max_steps, step, rank == 0 and cfg.progress,
                            f"stage {cfg.stage}")
    t_last, seen = time.perf_counter(), 0
    fill = cfg.strategy == "fsdp" and world > 1
    while step < cfg.max_steps:
        micro = [next(stream) for _ in range(cfg.grad_accum)]
        factor = math.inf if step + 1 in overflow_steps else 1.0
        loss_ce, loss_mse = _step(model, net, micro, world, autocast, scaler, device,
                                  fill=fill, loss_factor=factor)
        done = optimizer_step(optim, sched, scaler, params, cfg.clip, step, rank,
                              skipped_total)
        skipped_total += done.skipped
        lr = done.lr
        step += 1
        epoch, batch_pos = next_position(micro, sampler)
        seen += cfg.batch_size * world * cfg.grad_accum
        loss = loss_ce + loss_mse
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            rate = seen / (now - t_last)
            t_last, seen = now, 0
            row = {"loss": loss, "ce": loss_ce, "mse": loss_mse, "lr": lr,
                   "grad_norm": done.grad_norm, "samples_per_s": rate, "epoch": epoch}
            if scaler.is_enabled():
                row.update(loss_scale=scaler.get_scale(), skipped=done.skipped,
                           skipped_steps=skipped_total)
            metrics.write(step, row)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        stopping = cfg.stop_after is not None and step >= start_step + cfg.stop_after
        if step % cfg.save_every == 0 or step == cfg.max_steps or stopping:
            trained = full_trained(model)  # collectives: every rank
            optim_state = optimizer_state(model, optim, cfg)
            save_checkpoint(model, out, optim, sched, scaler, step, epoch, batch_pos, rank,
                            world, cfg, trained=trained, optim_state=optim_state,
                            extra={"strategy": cfg.strategy, "skipped_steps": skipped_total})
        if stopping:
            log.info("stopping at step %d of %d (stop_after=%d); continue with --resume",
                     step, cfg.max_steps, cfg.stop_after)
            break
    progress.close()
    metrics.close()
    if rank == 0 and scaler.is_enabled():
        log.info("fp16: %d of %d steps skipped on overflow; final loss scale %g",
                 skipped_total, step, scaler.get_scale())
    barrier(world)
    return out


def _step(model, net, micro, world, autocast, scaler, device, fill: bool = False,
          loss_factor: float = 1.0) -> tuple[float, float]:
    """Forward/backward over the accumulation micro-batches with global normalisation.

    `fill` (FSDP): every rank runs every adapter and the projector that some rank's
    micro-batch needs in this step, on zero inputs where its own has none, so all ranks
    hold gradients for the same tensors (FSDP reduces only those; DDP's
    find_unused_parameters does this for DDP). Zero inputs give zero gradients: the
    update is unchanged."""
    prepared = []
    # supervised tokens, music target elements, then which modalities / music appear
    counts = torch.zeros(3 + len(MODALITIES), dtype=torch.float64, device=device)
    for _, _, batch in micro:
        with torch.no_grad():
            feats = batch_features(model, batch)
            music = batch_music(model, batch)
        ids = batch["input_ids"].to(device)
        labels = batch["labels"].to(device)
        counts[0] += (labels[:, 1:] != -100).sum()
        if music:
            counts[1] += music["music_mask"].sum()
            counts[2] += 1
        for j, m in enumerate(MODALITIES):
            counts[3 + j] += m in feats
        prepared.append((ids, batch["attention_mask"].to(device), labels, feats, music))
    counts = all_sum(counts, world)
    if fill:
        for ids, _, _, feats, music in prepared:
            _fill(model, feats, music, counts, ids.shape[0])
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for i, (ids, mask, labels, feats, music) in enumerate(prepared):
        sync = i == len(prepared) - 1 or world == 1
        if hasattr(net, "set_requires_gradient_sync"):  # FSDP: reduce-scatter once
            net.set_requires_gradient_sync(sync)
        ctx = net.no_sync() if not sync and hasattr(net, "no_sync") else nullcontext()
        with ctx, torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = net(ids, mask, labels, feats, **music)
            ce = out["ce_sum"] / counts[0].clamp(min=1)
            mse = out["mse_sum"] / counts[1].clamp(min=1)
            # DDP and FSDP average gradients over ranks; the sums are global: undo the mean
            scaler.scale((ce + mse) * (world * loss_factor)).backward()
        totals += torch.stack([ce.detach().double(), mse.detach().double()])
    totals = all_sum(totals, world)
    return float(totals[0]), float(totals[1])


def _fill(model, feats: dict, music: dict, counts: torch.Tensor, b: int) -> None:
    """Zero features (present: False) for modalities some rank has and this micro-batch
    lacks; an empty music batch (M=0) when some rank has music and this one has none."""
    for j, m in enumerate(MODALITIES):
        if counts[3 + j] > 0 and m not in feats:
            feats[m] = (torch.zeros(b, *model.feature_shape(m), device=model.device,
                                    dtype=model.dtype),
                        torch.zeros(b, dtype=torch.bool, device=model.device))
    if counts[2] > 0 and not music:
        c, dev = model.config, model.device
        shape = (0, c.projector_tokens, c.projector_dim)
        music.update(music_rows=torch.zeros(0, dtype=torch.long, device=dev),
                     music_positions=torch.zeros(0, len(model.llm.audio_token_ids),
                                                 dtype=torch.long, device=dev),
                     music_target=torch.zeros(shape, device=dev),
                     music_mask=torch.zeros(shape, dtype=torch.bool, device=dev))
