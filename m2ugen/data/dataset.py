"""Torch dataset over Examples: token ids, media (decoded or cached features), targets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from m2ugen.config import MODALITIES
from m2ugen.data.batching import tokenize_example
from m2ugen.data.cache import FeatureCache, caption_key, component_id, media_key
from m2ugen.data.example import Example
from m2ugen.media import load_media

log = logging.getLogger(__name__)



class TrainDataset(Dataset):
    """Items for `collate`: ids/labels plus, per modality, a cached feature or raw media.

    Args:
        examples: the stage's examples.
        model: the M2UGen model (tokenizer, config, encoder settings, component ids).
        max_len: sequence cap.
        cache: optional feature cache; cached entries replace decoding + encoding.
    """

    def __init__(self, examples: Sequence[Example], model, max_len: int,
                 cache: FeatureCache | None = None) -> None:
        self.examples = list(examples)
        cfg = model.config
        self.spec = model.media_spec  # audio rate and video frames of the model's encoders
        base = model.base_dir
        self.encoder_ids = {m: component_id(ref, base) for m, ref in
                            (("audio", cfg.mert), ("image", cfg.vit), ("video", cfg.vivit))}
        self.decoder_id = f"{cfg.decoder}:{component_id(cfg.decoder_path, base)}"
        self.cache = cache
        self.tokens = [tokenize_example(ex, model.tokenizer, cfg.prompt_template,
                                        model.llm.audio_token_ids, max_len)
                       for ex in self.examples]
        cut = sum(t.truncated for t in self.tokens)
        if cut:
            log.warning("%d of %d examples are longer than max_len=%d and were cut", cut,
                        len(self.tokens), max_len)

    @property
    def lengths(self) -> list[int]:
        return [len(t.input_ids) for t in self.tokens]

    def feature_key(self, ex: Example, modality: str) -> str | None:
        path = getattr(ex, modality)
        return None if path is None else media_key(path, modality, self.encoder_ids[modality])

    def target_key(self, ex: Example) -> str | None:
        return None if ex.music_caption is None else caption_key(ex.music_caption,
                                                                  self.decoder_id)

    def load_media(self, ex: Example, modality: str) -> Any:
        return load_media(modality, getattr(ex, modality), self.spec)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex, tok = self.examples[i], self.tokens[i]
        item: dict[str, Any] = {"input_ids": tok.input_ids, "labels": tok.labels,
                                "audio_positions": tok.audio_positions,
                                "caption": ex.music_caption if tok.audio_positions else None}
        for m in MODALITIES:
            item[f"{m}_feat"] = item[m] = None
            if getattr(ex, m) is None:
                continue
            key = self.feature_key(ex, m)
            if self.cache is not None and key in self.cache:
                item[f"{m}_feat"] = self.cache.get(key)
            else:
                item[m] = self.load_media(ex, m)
        item["target"] = None
        key = self.target_key(ex)
        if item["caption"] is not None and self.cache is not None and key in self.cache:
            item["target"] = (self.cache.get(key), self.cache.get(key + "-mask"))
        return item

