"""Frozen encoders: raw media arrays → raw features (the input of the adapters).

- music: MERT (loaded natively as transformers' HubertModel when its config allows,
  STACK.md "MERT without remote code") on ≤ chunk-second pieces; every hidden state is
  averaged over time, then over pieces → (B, layers+1, width);
- image: ViT `last_hidden_state` → (B, tokens, width);
- video: ViViT `last_hidden_state` over `num_frames` frames → (B, tokens, width).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoModel,
    HubertConfig,
    HubertModel,
    PretrainedConfig,
    ViTModel,
    VivitImageProcessor,
    VivitModel,
    Wav2Vec2FeatureExtractor,
)

from m2ugen.errors import ConfigError, loading
from m2ugen.media import MediaSpec

log = logging.getLogger(__name__)

# MERT config switches that change the computation (STACK.md); when any is on, the
# native HuBERT path would be wrong and the hub's remote code must run instead.
_MERT_REMOTE_ONLY = ("feature_extractor_cqt", "deepnorm")


def load_mert(path: str, dtype: torch.dtype, device: torch.device | None = None,
              trust_remote_code: bool = False) -> tuple[nn.Module, str]:
    """Load MERT (or a HuBERT stand-in); returns the model and which path ran.

    The remote-code path imports Python files that come with the model (its config's
    auto_map), so it runs only when the user opted in with `trust_remote_code`.
    """
    raw, _ = PretrainedConfig.get_config_dict(path)
    if raw.get("model_type") == "hubert" or not any(raw.get(k) for k in _MERT_REMOTE_ONLY):
        config = HubertConfig.from_dict({k: v for k, v in raw.items() if k != "auto_map"})
        model = HubertModel.from_pretrained(path, config=config, dtype=dtype,
                                            device_map=_device_map(device))
        how = "native HubertModel"
    else:
        switches = ", ".join(k for k in _MERT_REMOTE_ONLY if raw.get(k))
        if not trust_remote_code:
            where = Path(path) / "config.json" if Path(path).is_dir() else f"{path} config.json"
            raise ConfigError(
                f"{where}: this MERT config enables {switches}, which only the model's own "
                "Python code (remote code, its auto_map) computes; rerun with "
                f"--trust-remote-code (training configs: trust_remote_code=true) if you trust "
                f"{path}")
        try:
            model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype,
                                              device_map=_device_map(device))
        except (ValueError, ImportError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(
                f"{path}: this MERT config enables {switches}, which only the hub's remote code "
                f"(modeling_MERT.py) computes, and it could not be loaded ({reason}); use a "
                "MERT checkpoint with those switches off or a repo that ships its code") from e
        how = f"remote code (config enables {switches})"
    log.info("MERT %s loaded as %s", path, how)
    return model.eval(), how


class MusicEncoder(nn.Module):
    """MERT features per clip: (B, layers+1, width)."""

    kind = "mert"

    def __init__(self, model: nn.Module, processor: Wav2Vec2FeatureExtractor,
                 chunk_seconds: float = 60.0) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.chunk_seconds = chunk_seconds

    @property
    def sample_rate(self) -> int:
        return int(self.processor.sampling_rate)

    def _chunks(self, wav: np.ndarray) -> list[np.ndarray]:
        size = int(self.chunk_seconds * self.sample_rate)
        n = max(1, math.ceil(len(wav) / size))
        pieces = [wav[i * size:(i + 1) * size] for i in range(n)]
        # the conv front end needs some samples; pad pieces shorter than 1 s with silence
        return [np.pad(p, (0, max(0, self.sample_rate - len(p)))) for p in pieces]

    @torch.no_grad()
    def forward(self, waveforms: Sequence[np.ndarray]) -> torch.Tensor:
        param = next(self.model.parameters())
        out = []
        for wav in waveforms:
            per_chunk = []
            for piece in self._chunks(np.asarray(wav, dtype=np.float32)):
                inputs = self.processor(piece, sampling_rate=self.sample_rate,
                                        return_tensors="pt")
                values = inputs["input_values"].to(param.device, param.dtype)
                hidden = self.model(values, output_hidden_states=True).hidden_states
                per_chunk.append(torch.stack([h[0].mean(0) for h in hidden]))  # (L+1, W)
            out.append(torch.stack(per_chunk).mean(0))
        return torch.stack(out)


class ImageEncoder(nn.Module):
    """ViT `last_hidden_state` per image: (B, tokens, width)."""

    kind = "vit"

    def __init__(self, model: ViTModel, processor) -> None:
        super().__init__()
        self.model = model
        self.processor = processor

    @torch.no_grad()
    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        param = next(self.model.parameters())
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        return self.model(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state


class VideoEncoder(nn.Module):
    """ViViT `last_hidden_state` per clip of `num_frames` frames: (B, tokens, width)."""

    kind = "vivit"

    def __init__(self, model: VivitModel, processor) -> None:
        super().__init__()
        self.model = model
        self.processor = processor

    @property
    def num_frames(self) -> int:
        return int(self.model.config.num_frames)

    @torch.no_grad()
    def forward(self, videos: Sequence[np.ndarray]) -> torch.Tensor:
        param = next(self.model.parameters())
        clips = []
        for video in videos:
            if len(video) != self.num_frames:
                raise ConfigError(
                    f"video has {len(video)} frames but the ViViT encoder takes "
                    f"{self.num_frames}; load it with load_video(path, num_frames="
                    f"{self.num_frames})"
                )
            clips.append(list(video))
        pixels = self.processor(clips, return_tensors="pt")["pixel_values"]  # (B, F, C, H, W)
        return self.model(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state


def _device_map(device: torch.device | None) -> dict[str, str] | None:
    """Load straight onto `device`: host RAM never holds more than one file at a time."""
    return None if device is None else {"": str(device)}


def load_encoders(mert: str, vit: str, vivit: str, dtype: torch.dtype,
                  chunk_seconds: float, device: torch.device | None = None,
                  trust_remote_code: bool = False) -> dict[str, nn.Module]:
    """All three frozen encoders with their processors, in eval mode, on `device`.

    Only MERT may need remote code (`trust_remote_code`); the image processors are always
    loaded with it off, so an auto_map in their configs never runs anything.
    """
    with loading("music encoder (MERT)", mert):
        mert_model, _ = load_mert(mert, dtype, device, trust_remote_code)
        music = MusicEncoder(mert_model, Wav2Vec2FeatureExtractor.from_pretrained(mert),
                             chunk_seconds)
    where = _device_map(device)
    with loading("image encoder (ViT)", vit):
        image = ImageEncoder(ViTModel.from_pretrained(vit, dtype=dtype, add_pooling_layer=False,
                                                      device_map=where).eval(),
                             AutoImageProcessor.from_pretrained(vit, trust_remote_code=False))
    with loading("video encoder (ViViT)", vivit):
        # ViViT's processor exists for torchvision only: AutoImageProcessor would ask for
        # the PIL one and log that it fell back
        video = VideoEncoder(VivitModel.from_pretrained(vivit, dtype=dtype,
                                                        add_pooling_layer=False,
                                                        device_map=where).eval(),
                             VivitImageProcessor.from_pretrained(vivit))
    return {"audio": music, "image": image, "video": video}


def encoder_features(kind: str, cfg: dict[str, Any]) -> tuple[int, int]:
    """(tokens, width) an encoder emits per input, from its config.json as a dict; `kind`
    is mert, vit or vivit. The one statement of the token-count math."""
    width = int(cfg["hidden_size"])
    if kind == "mert":  # every hidden state: layers + embeddings
        return int(cfg["num_hidden_layers"]) + 1, width
    size = int(cfg["image_size"])
    if kind == "vit":  # patches + [CLS]
        return (size // int(cfg["patch_size"])) ** 2 + 1, width
    t, h, w = cfg["tubelet_size"]  # tubelets + [CLS]
    return (int(cfg["num_frames"]) // t) * (size // h) * (size // w) + 1, width


def feature_shape(encoder: nn.Module) -> tuple[int, int]:
    """(tokens, width) a loaded encoder emits per input, from its config."""
    return encoder_features(encoder.kind, encoder.model.config.to_dict())


def read_media_spec(mert: str, vivit: str) -> MediaSpec:
    """How media must be loaded for these encoders, from their small config files only
    (MERT's feature-extractor rate, ViViT's frame count): no weights are read, so a face
    can decode attachments before the slow model load."""
    with loading("music encoder (MERT)", mert):
        rate = Wav2Vec2FeatureExtractor.from_pretrained(mert).sampling_rate
    with loading("video encoder (ViViT)", vivit):
        raw, _ = PretrainedConfig.get_config_dict(vivit)
    return MediaSpec(sample_rate=int(rate), num_frames=int(raw["num_frames"]))
