"""The music captioner of the caption steps: an m2ugen model, or a transformers
audio-language model (Qwen2-Audio by default), told apart by the config it ships.

    m2ugen.json (or an m2ugen preset name)  -> MusicCaptioner (captioners.py)
    config.json whose model_type is listed in AUDIO_LANGUAGE_MODELS -> AudioLanguageCaptioner

Both take a batch of audio paths and return one outcome per path (the caption, or the
exception that item raised), ask the same prompt greedily, hear the first
`clip_seconds` of each clip and load once on `--device` in `--dtype`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets_gen.common.captioners import MUSIC_PROMPT, MusicCaptioner, Outcome, check_caption
from datasets_gen.common.records import DatasetGenError
from datasets_gen.common.trust import loading_model
from m2ugen.media import load_audio

log = logging.getLogger(__name__)

# Apache-2.0, native in transformers (no remote code), trained on music captioning among
# other audio tasks; ~8.4 B parameters: ~17 GB of GPU memory in bf16 (README.md)
AUDIO_CAPTIONER = "Qwen/Qwen2-Audio-7B-Instruct"

# config.json model_type -> the transformers class that generates text from audio and a
# chat prompt through its processor (`processor(text=..., audio=..., sampling_rate=...)`)
AUDIO_LANGUAGE_MODELS = {"qwen2_audio": "Qwen2AudioForConditionalGeneration"}

DTYPES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype(name: str, device: str) -> Any:
    """--dtype → a torch dtype; 'auto' is m2ugen's choice for the device (bf16/fp16 on
    GPUs, fp32 on CPU: `m2ugen.loading.default_dtype`)."""
    import torch

    from m2ugen.loading import default_dtype

    if name == "auto":
        return default_dtype(torch.device(device))
    return getattr(torch, name)


def captioner_kind(name: str, trust_remote_code: bool = False) -> str:
    """'m2ugen' or 'transformers', from the model's config; a one-line error otherwise.

    An m2ugen preset name or a directory holding m2ugen.json is an m2ugen model; anything
    else (a directory with config.json, or a hub id) must have a transformers config whose
    model_type is an audio-language model listed in AUDIO_LANGUAGE_MODELS."""
    from m2ugen.checkpoint import CONFIG_NAME
    from m2ugen.presets import PRESET_NAMES

    if name in PRESET_NAMES:
        return "m2ugen"
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / CONFIG_NAME).is_file():
            return "m2ugen"
        if not (path / "config.json").is_file():
            raise DatasetGenError(f"--model {name}: the folder has neither {CONFIG_NAME} (an "
                                  "m2ugen model) nor config.json (a transformers model)")
    elif path.exists():
        raise DatasetGenError(f"--model {name}: is a file; pass a model directory, an m2ugen "
                              "preset or a hub id")
    elif name.startswith(("/", ".", "~")):  # a path, never a hub id (owner/name)
        raise DatasetGenError(f"--model {name}: no such directory")
    model_type = transformers_config(name, trust_remote_code).model_type
    if model_type not in AUDIO_LANGUAGE_MODELS:
        raise DatasetGenError(
            f"--model {name}: a transformers {model_type!r} model, not an audio-language "
            f"model this step can run ({', '.join(AUDIO_LANGUAGE_MODELS)}); pass one of "
            f"those (default {AUDIO_CAPTIONER}) or an m2ugen model")
    return "transformers"


def transformers_config(name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    with loading_model("music captioner", name):
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)


def music_captioner(name: str, device: str, dtype: str = "auto", prompt: str = MUSIC_PROMPT,
                    max_new_tokens: int = 128, clip_seconds: float = 30.0,
                    trust_remote_code: bool = False) -> MusicCaptioner | AudioLanguageCaptioner:
    """The captioner `name`'s config calls for, loaded on `device` in `dtype` (DTYPES)."""
    cls = {"m2ugen": MusicCaptioner, "transformers": AudioLanguageCaptioner}[
        captioner_kind(name, trust_remote_code)]
    return cls(name, device, torch_dtype(dtype, device), prompt, max_new_tokens, clip_seconds,
               trust_remote_code=trust_remote_code)


class AudioLanguageCaptioner:
    """A transformers audio-language model asked `prompt` about each clip, greedily, one
    batched `generate` per batch (left padding). The processor's chat template places the
    audio; its feature extractor gives the sampling rate and the longest window the model
    hears (Qwen2-Audio: 30 s at 16 kHz)."""

    def __init__(self, name: str, device: str, dtype: Any = None, prompt: str = MUSIC_PROMPT,
                 max_new_tokens: int = 128, clip_seconds: float = 30.0,
                 trust_remote_code: bool = False) -> None:
        import transformers
        from transformers import AutoProcessor

        config = transformers_config(name, trust_remote_code)
        cls = getattr(transformers, AUDIO_LANGUAGE_MODELS[config.model_type])
        with loading_model("music captioner", name):
            self.processor = AutoProcessor.from_pretrained(
                name, trust_remote_code=trust_remote_code)
            # each weight goes straight to the device (no full host copy of ~17 GB first)
            self.model = cls.from_pretrained(name, dtype=dtype, device_map=device).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        extractor = self.processor.feature_extractor
        self.sample_rate = int(extractor.sampling_rate)
        window = getattr(extractor, "n_samples", None)  # Whisper-style fixed window
        self.clip_seconds = clip_seconds if window is None else min(
            clip_seconds, window / self.sample_rate)
        if self.clip_seconds < clip_seconds:
            log.info("%s hears at most %.0f s of each clip (its feature extractor's window); "
                     "captioning the first %.0f s", name, self.clip_seconds, self.clip_seconds)
        self.device, self.dtype = device, self.model.dtype
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    def load(self, path: Path) -> np.ndarray:
        wav = load_audio(path, self.sample_rate)
        return wav[: int(self.clip_seconds * self.sample_rate)]

    def _text(self, path: Path) -> str:
        messages = [{"role": "user", "content": [{"type": "audio", "audio_url": str(path)},
                                                 {"type": "text", "text": self.prompt}]}]
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        import torch

        out: list[Outcome] = []
        wavs, texts, where = [], [], []
        for path in paths:
            try:
                wavs.append(self.load(path))
                texts.append(self._text(path))
                where.append(len(out))
                out.append("")
            except Exception as e:  # noqa: BLE001 - returned: recorded as this item's failure
                out.append(e)
        if wavs:
            enc = self.processor(text=texts, audio=wavs, sampling_rate=self.sample_rate,
                                 padding=True, return_tensors="pt")
            enc = enc.to(self.device)
            for k, v in enc.items():  # features in the model's dtype, ids and masks as they are
                if torch.is_floating_point(v):
                    enc[k] = v.to(self.dtype)
            with torch.no_grad():
                ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens,
                                          do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            new = ids[:, enc["input_ids"].shape[1]:]  # (B, new tokens)
            replies = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in zip(where, replies, strict=True):
                out[i] = check_caption(text, paths[i])
        return out
