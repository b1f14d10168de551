"""Music embeddings for the MUEdit pair finder: MERT (or any m2ugen music encoder).

`--encoder` names an m2ugen model directory or preset (its MERT is used) or a MERT
checkpoint directly (hub id or directory). An embedding is the encoder's per-layer
time-averaged features (layers+1, width), averaged over layers or taken at one layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from m2ugen.config import CONFIG_NAME, resolve_component
from m2ugen.presets import PRESET_NAMES


def mert_reference(encoder: str) -> str:
    """The MERT checkpoint behind `encoder` (model dir / preset / MERT id or dir)."""
    from m2ugen.model import M2UGen
    from m2ugen.presets import resolve_model

    if encoder in PRESET_NAMES or (Path(encoder) / CONFIG_NAME).is_file():
        config, base = resolve_model(encoder, model_cls=M2UGen)
        return resolve_component(config.mert, base)
    return encoder


class MusicEmbedder:
    def __init__(self, encoder: str, device: str, layer: int | None = None,
                 chunk_seconds: float = 30.0, trust_remote_code: bool = False) -> None:
        import torch
        from transformers import Wav2Vec2FeatureExtractor

        from m2ugen.errors import loading
        from m2ugen.modules.encoders import MusicEncoder, load_mert

        ref = mert_reference(encoder)
        with loading("music encoder (MERT)", ref):  # remote code only with the opt-in
            model, _ = load_mert(ref, torch.float32, trust_remote_code=trust_remote_code)
        self.encoder = MusicEncoder(model.to(device),
                                    Wav2Vec2FeatureExtractor.from_pretrained(ref),
                                    chunk_seconds)
        self.layer = layer

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    def __call__(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """(B, width) float32 embeddings."""
        feats = self.encoder(list(waveforms)).float().cpu().numpy()  # (B, L+1, W)
        return feats.mean(axis=1) if self.layer is None else feats[:, self.layer]
