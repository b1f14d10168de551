"""Everything in training that runs the frozen model on data: encoder features and decoder
targets for a batch (from the feature cache where present, live otherwise), and the
`m2ugen cache-features` job that precomputes them once. The data layer below only reads
files and cached tensors; it never calls the model.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from m2ugen.config import MODALITIES
from m2ugen.data.cache import FeatureCache
from m2ugen.data.dataset import TrainDataset
from m2ugen.data.spec import collect, load_spec
from m2ugen.errors import ConfigError
from m2ugen.model import M2UGen
from m2ugen.training.config import TrainConfig


def train_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    """The device of this rank: cfg.device, or cuda:LOCAL_RANK when there is a GPU."""
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def batch_features(model, batch: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-modality (feats (B, tokens, width), present (B,)) from cached features, encoding
    the rest live with the frozen encoders."""
    b = batch["input_ids"].shape[0]
    out = {}
    for m in MODALITIES:
        cached, raw = batch[f"{m}_feat"], batch[m]
        if all(c is None for c in cached) and all(r is None for r in raw):
            continue
        live = model.encode(b, **{m: raw})[m][0] if any(r is not None for r in raw) else None
        feats = torch.zeros(b, *model.feature_shape(m), device=model.device, dtype=model.dtype)
        present = torch.zeros(b, dtype=torch.bool, device=model.device)
        for i in range(b):
            if cached[i] is not None:
                feats[i] = cached[i].to(model.device, model.dtype)
                present[i] = True
            elif raw[i] is not None:
                feats[i] = live[i]
                present[i] = True
        out[m] = (feats, present)
    return out


def needs_decoder(examples: list) -> bool:
    """Whether some example's answer is music: its target comes from the decoder, which is
    only loaded then."""
    return any(ex.music_caption is not None for ex in examples)


def batch_music(model, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Music rows, [AUD] positions and targets (cached, or from the decoder) for a batch."""
    rows = [i for i, c in enumerate(batch["caption"]) if c is not None]
    if not rows:
        return {}
    dev = model.device
    missing = [i for i in rows if batch["target"][i] is None]
    live = {}
    if missing:
        t, mask = model.decoder.target([batch["caption"][i] for i in missing])
        live = {i: (t[k], mask[k]) for k, i in enumerate(missing)}
    targets = [batch["target"][i] or live[i] for i in rows]
    return {
        "music_rows": torch.tensor(rows, device=dev),
        "music_positions": torch.tensor([batch["audio_positions"][i] for i in rows], device=dev),
        "music_target": torch.stack([t.to(dev) for t, _ in targets]),
        "music_mask": torch.stack([m.to(dev) for _, m in targets]),
    }


def cache_features(cfg, flush_every: int = 64) -> FeatureCache:
    """Precompute encoder features of every media file and decoder targets of every music
    caption of the config's stage into `cfg.feature_cache` (resumable)."""
    if not cfg.feature_cache:
        raise ConfigError("feature_cache is not set; pass feature_cache=DIR")
    device = train_device(cfg, 0)
    examples = collect(load_spec(cfg.data), f"stage{cfg.stage}", skip_bad=cfg.skip_bad)
    model = M2UGen.from_pretrained(cfg.model, device=device,
                                   trust_remote_code=cfg.trust_remote_code,
                                   decoder=needs_decoder(examples))
    cache = FeatureCache(cfg.feature_cache)
    data = TrainDataset(examples, model, cfg.max_len, cache=None)
    jobs: dict[str, tuple[str, object]] = {}
    for ex in examples:
        for m in MODALITIES:
            key = data.feature_key(ex, m)
            if key is not None and key not in cache:
                jobs[key] = (m, ex)
        key = data.target_key(ex)
        if key is not None and key not in cache:
            jobs[key] = ("target", ex)
    done = 0
    for key, (kind, ex) in tqdm(jobs.items(), desc="caching features", unit="item",
                                disable=not cfg.progress):
        with torch.no_grad():
            if kind == "target":
                target, mask = model.decoder.target([ex.music_caption])
                cache.add(key, target[0])
                cache.add(key + "-mask", mask[0])
            else:
                media = data.load_media(ex, kind)
                cache.add(key, model.encode(1, **{kind: media})[kind][0][0])
        done += 1
        if done % flush_every == 0:
            cache.flush()
    cache.flush()
    return cache
