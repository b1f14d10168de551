"""`m2ugen train-decoder`: fine-tune a model's MusicGen or AudioLDM2 on one's own music.

    m2ugen train-decoder --config configs/decoder_musicgen.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node N -m m2ugen.cli train-decoder --config ...   (DDP)

The same trainer as the stages (`runtime.py`: ranks, precision, lr schedule, optimizer
step, batch stream; `parallel.py`: DDP, optimizer, scaler; `state.py`: trainer_state/
step-N, exact resume, metrics.jsonl + TensorBoard); only the batch and its loss are the
decoder's own (`decoder_objectives.py`). The audio is encoded once (EnCodec codes or VAE
latents, `decoder_cache/`); each loss is normalised by its global count, so N ranks
compute the update of one.

`out` becomes a model directory whose `decoder_path` is the fine-tuned decoder folder
`out/decoder/` (decoder.json + decoder.safetensors: the trained tensors only; see
`modules/decoders/tuning.py`), beside the model's own config, tokenizer and trained
tensors: `m2ugen chat --model OUT`, the app and `m2ugen eval` use it; `m2ugen info OUT`
shows it. Every `eval_every` steps the held-out captions are rendered into
`out/samples/step-N/` (and TensorBoard's audio tab).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch

from m2ugen.checkpoint import (
    CONFIG_NAME,
    STATE_DIR,
    TRAINED_NAME,
    atomic_path,
    atomic_write_text,
    fingerprint,
    save_tensors,
)
from m2ugen.config import M2UGenConfig, resolve_component
from m2ugen.data.audio_captions import (
    AudioCaption,
    quality_caption,
    read_audio_captions,
    report_bad,
)
from m2ugen.data.batching import ResumableBatchSampler
from m2ugen.errors import ConfigError
from m2ugen.loading import decoder_parameters, portable_config
from m2ugen.media import load_audio, save_audio
from m2ugen.model import M2UGen
from m2ugen.modules.decoders import load_decoder
from m2ugen.modules.decoders import tuning as tuned
from m2ugen.presets import resolve_model
from m2ugen.training.decoder_config import DecoderTrainConfig
from m2ugen.training.decoder_data import FIELD, ClipDataset, cache_clips, collate_clips
from m2ugen.training.decoder_objectives import (
    AudioLDM2Objective,
    MusicGenObjective,
    example_generator,
)
from m2ugen.training.features import train_device
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
    MetricsLog,
    read_trainer_state,
    restore_trainer_state,
    save_checkpoint,
)

log = logging.getLogger(__name__)

DECODER_DIR = "decoder"  # the fine-tuned decoder folder inside the run
SAMPLES_DIR = "samples"
CACHE_DIR = "decoder_cache"


class DecoderRun:
    """What `save_checkpoint` writes and resume reads, for a decoder fine-tune: the tuned
    module's trained tensors, `out/decoder/` and the model directory around it."""

    def __init__(self, module: torch.nn.Module, kind: str, base_ref: str,
                 config: M2UGenConfig, model_dir: Path | None, cfg: DecoderTrainConfig) -> None:
        self.module, self.kind, self.base_ref = module, kind, base_ref
        self.config, self.model_dir, self.cfg = config, model_dir, cfg

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        return tuned.trained_parameters(self.module)

    def load_trained(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        tuned.load_trained(self.module, tensors, source)

    def write_model_files(self, out: Path, metadata: dict[str, str] | None = None,
                          dtype: torch.dtype | None = None,
                          tensors: dict[str, torch.Tensor] | None = None) -> None:
        """decoder/ (tensors, then decoder.json), then — once — the model directory's
        tokenizer, trained tensors and m2ugen.json (last: a half-written run never loads)."""
        tensors = self.trained_parameters() if tensors is None else tensors
        folder = out / DECODER_DIR
        save_tensors(folder / tuned.TUNED_TENSORS,
                     {k: v if dtype is None else v.to(dtype) for k, v in tensors.items()},
                     metadata={"format": tuned.TUNED_FORMAT, **(metadata or {})})
        base = self.base_ref
        local = Path(base).exists()
        info = {"format": tuned.TUNED_FORMAT, "version": tuned.TUNED_VERSION, "kind": self.kind,
                "base": str(Path(base).resolve()) if local else base,
                "base_fingerprint": fingerprint(base) if local else None,
                "tuning": self.cfg.tuning, "merge": self.cfg.merge,
                "step": int((metadata or {}).get("step", 0)),
                "clip_seconds": self.cfg.clip_seconds,
                "quality_tags": self.cfg.quality_column is not None}
        if self.cfg.tuning == "lora":
            info["lora"] = self.cfg.tuning_spec.to_dict() | {
                "targets": list(self.cfg.lora_targets or tuned.DEFAULT_TARGETS[self.kind])}
        atomic_write_text(folder / tuned.TUNED_CONFIG, json.dumps(info, indent=2) + "\n")
        if not (out / CONFIG_NAME).exists():
            self._write_model_directory(out)

    def _write_model_directory(self, out: Path) -> None:
        cfg = portable_config(self.config, self.model_dir)
        cfg.decoder_path = DECODER_DIR  # relative: the run directory moves as a whole
        cfg.base_fingerprints.pop("decoder_path", None)
        tokenizer = Path(resolve_component(self.config.tokenizer, self.model_dir))
        if tokenizer.is_dir():
            tmp = out / ".tokenizer.m2ugen-copy"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(tokenizer, tmp)
            shutil.rmtree(out / "tokenizer", ignore_errors=True)
            os.rename(tmp, out / "tokenizer")
            cfg.tokenizer = "tokenizer"
        trained = self.model_dir / TRAINED_NAME if self.model_dir is not None else None
        if trained is not None and trained.is_file():
            with atomic_path(out / TRAINED_NAME, suffix=".safetensors") as tmp:
                try:  # a hard link: no copy of a 2 GiB file, and the source is never changed
                    os.link(trained, tmp)
                except OSError:
                    shutil.copyfile(trained, tmp)
        cfg.save(out)


def _objective(decoder, cfg: DecoderTrainConfig):
    cls = MusicGenObjective if decoder.kind == "musicgen" else AudioLDM2Objective
    return cls(decoder, cfg.cond_dropout)


def build(cfg: DecoderTrainConfig, device: torch.device, world: int, rank: int):
    """(objective, run, dataset, sampler, held-out records, autocast dtype, decoder)."""
    autocast = autocast_dtype(cfg, device)
    # the data first: a bad record costs a second, not a model load
    records, bad = read_audio_captions(cfg.data, cfg.data_format, cfg.audio_root,
                                       cfg.quality_column)
    report_bad(bad, cfg.skip_bad, cfg.data)
    if len(records) <= cfg.holdout:
        raise ConfigError(f"{cfg.data}: {len(records)} usable record(s), holdout={cfg.holdout} "
                          "leaves none to train on; add records or lower holdout")
    held = records[len(records) - cfg.holdout:]
    records = records[:len(records) - cfg.holdout]
    config, model_dir = resolve_model(cfg.model, model_cls=M2UGen)
    ref = resolve_component(config.decoder_path, model_dir)
    if tuned.is_tuned(ref):
        raise ConfigError(f"{cfg.model}: its decoder {ref} is fine-tuned already; fine-tune "
                          "from the model it was made from (its decoder.json names the base)")
    decoder = load_decoder(config.decoder, ref, device, autocast or torch.float32)
    for _, p in decoder_parameters(decoder):
        p.requires_grad_(False)
    module = tuned.tuned_module(decoder)
    # LoRA's A matrices are drawn here: the same on every rank (FSDP shards each rank's own
    # copy, it does not broadcast rank 0's as DDP does)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        trained = tuned.prepare(module, cfg.tuning_spec, decoder.kind)
    for p in trained.values():  # master weights in fp32 (autocast computes in half)
        p.data = p.data.float()
    objective = _objective(decoder, cfg).eval()  # dropout layers off: a deterministic loss
    root = Path(cfg.cache) if cfg.cache else Path(cfg.out) / CACHE_DIR
    items, bad = cache_clips(decoder, records, cfg, ref, root, rank, world)
    report_bad(bad, cfg.skip_bad, cfg.data)
    if not items:
        raise ConfigError(f"{cfg.data}: no clip decoded; check the audio files")
    sampler = ResumableBatchSampler([1] * len(items), cfg.batch_size, world, rank, cfg.seed)
    run = DecoderRun(module, decoder.kind, ref, config, model_dir, cfg)
    if rank == 0:
        n = sum(p.numel() for p in trained.values())
        total = sum(p.numel() for _, p in decoder_parameters(decoder))
        log.info("decoder %s (%s): %s trained parameters of %s (%.3f%%); %d clips of %.1f s, "
                 "%d held out; global batch %d", decoder.kind, cfg.tuning, f"{n:,}",
                 f"{total:,}", 100 * n / total, len(items), cfg.clip_seconds, len(held),
                 cfg.batch_size * world * cfg.grad_accum)
    return objective, run, ClipDataset(items), sampler, held, autocast, decoder


def train_decoder(cfg: DecoderTrainConfig, resume: bool = False) -> Path:
    """Fine-tune the decoder of `cfg.model`; returns the run's model directory."""
    out = Path(cfg.out)
    if not resume and (out / STATE_DIR).exists():
        raise ConfigError(f"{out} holds a training run already; pass --resume to continue it "
                          "or choose another out=")
    if not resume and (out / CONFIG_NAME).exists():  # never overwrite someone's model
        raise ConfigError(f"{out} holds a model directory that is not a training run; "
                          "choose another out= (the model whose decoder to tune goes in model=)")
    world, rank, local = dist_setup()
    device = train_device(cfg, local)
    check_hardware(cfg, device, world)
    saved = read_trainer_state(out) if resume else None  # a bad state costs no model load
    torch.manual_seed(cfg.seed + rank)
    objective, run, dataset, sampler, held, autocast, decoder = build(cfg, device, world, rank)
    if rank == 0:
        log.info("%s", precision_note(cfg, autocast, device))
    if saved is not None:
        run.load_trained(saved.tensors, str(saved.weights))
    groups, whole = objective.fsdp_groups()
    net = wrap(objective, cfg, world, device, groups=groups, unsharded=whole)
    sharded = cfg.strategy == "fsdp" and world > 1
    params = list(run.trained_parameters().values())
    optim = make_optimizer(cfg, params)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_at(s, cfg) / cfg.lr)
    scaler = make_scaler(cfg, autocast, device, world)
    step, epoch, batch_pos, skipped_total = 0, 0, 0, 0
    if saved is not None:
        step, epoch, batch_pos = restore_trainer_state(
            saved, optim, sched, scaler, rank, device,
            partial(load_optimizer_state, objective, optim, cfg=cfg))
        skipped_total = int(saved.meta.get("skipped_steps", 0))
        log.info("resumed from %s at step %d (epoch %d, batch %d)", out, step, epoch, batch_pos)
    metrics = MetricsLog(out, enabled=rank == 0, resume=resume, tensorboard=cfg.tensorboard,
                         resume_step=step)
    stream = batch_stream(dataset, sampler, epoch, batch_pos, cfg.num_workers,
                          partial(collate_clips, field=FIELD[decoder.kind]))
    start_step = step
    progress = progress_bar(cfg.max_steps, step, rank == 0 and cfg.progress,
                            f"decoder {decoder.kind}")
    t_last, seen = time.perf_counter(), 0
    while step < cfg.max_steps:
        micro = [next(stream) for _ in range(cfg.grad_accum)]
        loss, n_dropped = _step(objective, net, micro, cfg, step, world, rank, autocast, scaler,
                                device)
        done = optimizer_step(optim, sched, scaler, params, cfg.clip, step, rank, skipped_total)
        skipped_total += done.skipped
        step += 1
        epoch, batch_pos = next_position(micro, sampler)
        seen += cfg.batch_size * world * cfg.grad_accum
        row: dict = {}
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            row = {"loss": loss, "lr": done.lr, "grad_norm": done.grad_norm,
                   "samples_per_s": seen / (now - t_last), "epoch": epoch,
                   "cond_dropped": n_dropped}
            t_last, seen = now, 0
            if scaler.is_enabled():
                row.update(loss_scale=scaler.get_scale(), skipped=done.skipped,
                           skipped_steps=skipped_total)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{done.lr:.2e}")
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            began = time.perf_counter()
            if rank == 0 or sharded:  # sharded weights: every rank takes part in a render
                row.update(render_held_out(decoder, held, cfg, out, step, metrics,
                                           write=rank == 0))
            barrier(world)
            t_last += time.perf_counter() - began  # samples_per_s counts training only
        if row:  # the step's losses and, after an evaluation, its scores (eval_*)
            metrics.write(step, row)
        stopping = cfg.stop_after is not None and step >= start_step + cfg.stop_after
        if step % cfg.save_every == 0 or step == cfg.max_steps or stopping:
            trained = full_trained(run)  # collectives under FSDP: every rank
            save_checkpoint(run, out, optim, sched, scaler, step, epoch, batch_pos, rank, world,
                            cfg, trained=trained,
                            optim_state=optimizer_state(objective, optim, cfg),
                            extra={"strategy": cfg.strategy, "skipped_steps": skipped_total})
        if stopping:
            log.info("stopping at step %d of %d (stop_after=%d); continue with --resume",
                     step, cfg.max_steps, cfg.stop_after)
            break
    progress.close()
    metrics.close()
    barrier(world)
    return out


def _step(objective, net, micro, cfg: DecoderTrainConfig, step: int, world: int, rank: int,
          autocast, scaler, device) -> tuple[float, int]:
    """Forward/backward over the accumulation micro-batches; the loss is normalised by the
    global count of supervised codes / latent elements (all ranks, all micro-batches)."""
    prepared = []
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # supervised, dropped
    for j, (_, _, batch) in enumerate(micro):
        first = (j * world + rank) * cfg.batch_size  # this batch's place in the global step
        gens = [example_generator(cfg.seed, step, first + i)
                for i in range(len(batch["captions"]))]
        inputs = objective.prepare(batch, gens)
        counts += torch.tensor([inputs.pop("count"), inputs.pop("dropped")],
                               dtype=torch.float64, device=device)
        prepared.append(inputs)
    counts = all_sum(counts, world)
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for i, inputs in enumerate(prepared):
        sync = i == len(prepared) - 1 or world == 1
        if hasattr(net, "set_requires_gradient_sync"):  # FSDP: reduce-scatter once
            net.set_requires_gradient_sync(sync)
        ctx = net.no_sync() if not sync and hasattr(net, "no_sync") else nullcontext()
        with ctx, torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = net(**inputs) / counts[0].clamp(min=1)
            # DDP averages gradients over ranks; the count is global: undo the mean
            scaler.scale(loss * world).backward()
        total += loss.detach().double()
    total = all_sum(total, world)
    return float(total[0]), int(counts[1])


def render_held_out(decoder, held: list[AudioCaption], cfg: DecoderTrainConfig, out: Path,
                    step: int, metrics: MetricsLog, write: bool = True) -> dict[str, float]:
    """Render the held-out captions (asked for "high quality" when the run tags quality)
    into out/samples/step-N/ as WAVs, and into TensorBoard's audio tab when it logs;
    with eval_metrics, score them; returns the scores ({} without), named eval_*."""
    captions = [quality_caption(r.caption, None if cfg.quality_column is None else
                                float("inf"), cfg.quality_threshold) for r in held]
    audio = decoder.generate_from_text(captions, cfg.eval_seconds, cfg.eval_guidance,
                                       seed=cfg.seed, steps=cfg.eval_steps,
                                       scheduler=cfg.eval_scheduler)
    folder = out / SAMPLES_DIR / f"step-{step:09d}"
    if not write:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    peak = float(np.abs(audio).max()) or 1.0
    for i, (wave, caption) in enumerate(zip(audio, captions, strict=True)):
        save_audio(folder / f"{i:02d}.wav", wave / max(peak, 1.0), decoder.sample_rate)
        if metrics.writer is not None:
            metrics.writer.add_audio(f"samples/{i:02d}", torch.from_numpy(wave), step,
                                     sample_rate=decoder.sample_rate)
            metrics.writer.add_text(f"samples/{i:02d}", caption, step)
    atomic_write_text(folder / "captions.json", json.dumps(captions, indent=2) + "\n")
    log.info("step %d: rendered %d held-out captions into %s", step, len(captions), folder)
    if not cfg.eval_metrics:
        return {}
    scores = score_renders(decoder, held, captions, cfg, out, folder)
    return {f"eval_{k}": v for k, v in scores.items()}


def score_renders(decoder, held: list[AudioCaption], captions: list[str],
                  cfg: DecoderTrainConfig, out: Path, folder: Path) -> dict[str, float]:
    """`m2ugen eval folder` on one evaluation's renders: each against its held-out clip
    (cut to eval_seconds, at the decoder's rate, in out/samples/reference/) and caption;
    results.json and the table land in <folder>/eval/."""
    # heavy (the metric packages, ~5 s to import): only eval_metrics=true needs it
    from m2ugen.eval.run import FolderRun, evaluate_folder

    reference = out / SAMPLES_DIR / "reference"
    if not reference.is_dir():
        n = int(round(cfg.eval_seconds * decoder.sample_rate))
        for i, r in enumerate(held):
            wave = load_audio(r.audio, decoder.sample_rate)[:n]
            save_audio(reference / f"{i:02d}.wav", np.pad(wave, (0, n - len(wave))),
                       decoder.sample_rate)
    table = folder / "captions_mucaps.json"  # the format eval folder reads
    atomic_write_text(table, json.dumps({f"{i:02d}.wav": c for i, c in enumerate(captions)}))
    results = evaluate_folder(FolderRun(generated=folder, reference=reference,
                                        out=folder / "eval", captions=table, label="renders",
                                        device=str(decoder.device),
                                        embeddings=cfg.eval_embeddings, seed=cfg.seed))
    values = {k: float(v["value"]) for k, v in results["metrics"].items()
              if isinstance(v.get("value"), (int, float))}
    log.info("renders scored: %s", ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    return values
