"""train-decoder's data: cached clips (EnCodec codes or VAE latent parameters, encoded
once by rank 0 into a `FeatureCache`), the dataset over them and its collate."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from m2ugen.checkpoint import fingerprint
from m2ugen.data.audio_captions import AudioCaption, quality_caption
from m2ugen.data.cache import FeatureCache
from m2ugen.data.formats import BadRecord
from m2ugen.errors import MediaError
from m2ugen.loading import decoder_parameters
from m2ugen.media import load_audio
from m2ugen.training.decoder_config import DecoderTrainConfig
from m2ugen.training.decoder_objectives import audioldm2_latents, musicgen_codes

log = logging.getLogger(__name__)

FIELD = {"musicgen": "codes", "audioldm2": "latents"}  # what the cache holds per clip


class ClipDataset(Dataset):
    """Cached clips: {field: codes (K, T) or latent parameters (2C, T', F'), "valid":
    frames of real audio, "caption"}."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate_clips(items: list[dict], field: str) -> dict:
    return {field: torch.stack([it[field] for it in items]),
            "valid": torch.tensor([it["valid"] for it in items]),
            "captions": [it["caption"] for it in items]}


def _key(kind: str, ref: str, dtype: torch.dtype, seconds: float, path: Path) -> str:
    st = path.stat()
    text = (f"{kind}|{Path(ref).resolve() if Path(ref).exists() else ref}|{fingerprint(ref)}|"
            f"{dtype}|{seconds}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return f"{FIELD[kind]}-" + hashlib.sha1(text.encode()).hexdigest()


def cache_clips(decoder, records: list[AudioCaption], cfg: DecoderTrainConfig, ref: str,
                root: Path, rank: int, world: int) -> tuple[list[dict], list[BadRecord]]:
    """Encode every clip once (rank 0; the others wait and read): EnCodec codes or VAE
    latent parameters, keyed by the decoder, its dtype, the clip length and the file's
    identity.
    A file that does not decode is a bad record."""
    kind = decoder.kind
    dtype = next(p for _, p in decoder_parameters(decoder) if not p.requires_grad).dtype
    keys = [_key(kind, ref, dtype, cfg.clip_seconds, r.audio) for r in records]
    bad: list[BadRecord] = []
    if rank == 0:
        cache = FeatureCache(root)
        encode = musicgen_codes if kind == "musicgen" else audioldm2_latents
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            log.info("encoding %d of %d clips into %s (once)", len(todo), len(keys), root)
        for n, i in enumerate(todo, 1):
            rec = records[i]
            try:
                wave = load_audio(rec.audio, decoder.sample_rate)
            except MediaError as e:
                bad.append(BadRecord(Path(rec.source.rsplit("#", 1)[0]),
                                     int(rec.source.rsplit("#", 1)[1]), rec.audio,
                                     f"cannot decode: {e}"))
                continue
            value, valid = encode(decoder, wave, cfg.clip_seconds)
            cache.add(keys[i], value)
            cache.add(keys[i] + "-valid", torch.tensor([valid]))
            if n % 64 == 0:
                cache.flush()
        cache.flush()
    if world > 1:
        shared = [bad]
        dist.broadcast_object_list(shared, src=0)
        bad = shared[0]
    cache = FeatureCache(root)
    items = [{FIELD[kind]: cache.get(k), "valid": int(cache.get(k + "-valid")[0]),
              "caption": quality_caption(r.caption, r.score, cfg.quality_threshold)}
             for k, r in zip(keys, records, strict=True) if k in cache]
    return items, bad
