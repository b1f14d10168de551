"""Captioners: music (an m2ugen model; a transformers audio-language model is in
audio_language.py), images (BLIP), video (a VisionEncoderDecoder model).

Each takes a batch of file paths and returns one outcome per path: the caption, or the
exception that item raised (a bad file fails only its own item). Models load once, on
the requested device, through `from_pretrained` (hub id or local directory).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datasets_gen.common.trust import loading_model
from m2ugen.media import load_audio, load_image, load_video

log = logging.getLogger(__name__)

MUSIC_PROMPT = "Describe the music in detail"
IMAGE_CAPTIONER = "Salesforce/blip-image-captioning-base"
VIDEO_CAPTIONER = "Neleac/timesformer-gpt2-video-captioning"

Outcome = str | Exception


def check_caption(text: str, path: Path) -> Outcome:
    text = " ".join(text.split())
    return text if text else ValueError(f"{path}: the captioner returned an empty caption")


class MusicCaptioner:
    """An m2ugen model (directory or preset) asked `prompt` about each clip, greedily."""

    def __init__(self, model: str, device: str, dtype: Any = None, prompt: str = MUSIC_PROMPT,
                 max_new_tokens: int = 128, clip_seconds: float = 30.0,
                 trust_remote_code: bool = False) -> None:
        from m2ugen.model import M2UGen

        # captions are text: the music decoder is never needed. dtype None: m2ugen's
        # default for the device (loading.default_dtype)
        self.model = M2UGen.from_pretrained(model, device=device, dtype=dtype, decoder=False,
                                            trust_remote_code=trust_remote_code)
        self.model.llm.merge_for_inference()  # generation only: fold LoRA in
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.clip_seconds = clip_seconds

    @property
    def sample_rate(self) -> int:
        return int(self.model.encoders["audio"].sample_rate)

    def load(self, path: Path) -> np.ndarray:
        wav = load_audio(path, self.sample_rate)
        return wav[: int(self.clip_seconds * self.sample_rate)]

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        from m2ugen.chat import ChatSession, GenerationSettings

        settings = GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=0, seed=0)
        out: list[Outcome] = []
        for path in paths:  # the chat API generates one reply at a time
            try:
                wav = self.load(path)
                reply = ChatSession(self.model).send(self.prompt, audio=wav, settings=settings)
                out.append(check_caption(reply.text, path))
            except Exception as e:  # noqa: BLE001 - returned: recorded as this item's failure
                out.append(e)
        return out


class ImageCaptioner:
    """BLIP (`BlipForConditionalGeneration` + `BlipProcessor`), beam search, batched."""

    def __init__(self, name: str, device: str, max_new_tokens: int = 40,
                 num_beams: int = 3, trust_remote_code: bool = False) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        with loading_model("image captioner", name):  # the processor loads Auto* parts
            self.processor = BlipProcessor.from_pretrained(
                name, trust_remote_code=trust_remote_code)
            self.model = BlipForConditionalGeneration.from_pretrained(name).to(device).eval()
        self.device = device
        self.kwargs = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        import torch

        out: list[Outcome] = []
        images, where = [], []
        for path in paths:
            try:
                images.append(load_image(path))
                where.append(len(out))
                out.append("")
            except Exception as e:  # noqa: BLE001 - returned: recorded as this item's failure
                out.append(e)
        if images:
            inputs = self.processor(images=images, return_tensors="pt").to(self.device)
            with torch.no_grad():
                ids = self.model.generate(**inputs, **self.kwargs)
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            for i, text in zip(where, texts, strict=True):
                out[i] = check_caption(text, paths[i])
        return out


class VideoCaptioner:
    """A `VisionEncoderDecoderModel`: a video encoder (TimeSformer, VideoMAE …) gets
    `config.encoder.num_frames` uniformly spaced frames; an image encoder gets the middle
    frame. Frames come from decord, or PyAV when decord is missing (m2ugen.media)."""

    def __init__(self, name: str, device: str, max_new_tokens: int = 40,
                 num_beams: int = 3, trust_remote_code: bool = False) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        with loading_model("video captioner", name):
            self.model = VisionEncoderDecoderModel.from_pretrained(name).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(
                name, trust_remote_code=trust_remote_code)
            self.tokenizer = AutoTokenizer.from_pretrained(
                name, trust_remote_code=trust_remote_code)
        self.num_frames = getattr(self.model.config.encoder, "num_frames", None)
        self.device = device
        self.kwargs = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}

    def _frames(self, path: Path) -> np.ndarray | object:
        if self.num_frames:
            return list(load_video(path, num_frames=int(self.num_frames)))
        frames = load_video(path, num_frames=3)
        from PIL import Image

        return Image.fromarray(frames[1])

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        import torch

        out: list[Outcome] = []
        clips, where = [], []
        for path in paths:
            try:
                clips.append(self._frames(path))
                where.append(len(out))
                out.append("")
            except Exception as e:  # noqa: BLE001 - returned: recorded as this item's failure
                out.append(e)
        if clips:
            pixels = self.processor(clips, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                ids = self.model.generate(pixel_values=pixels.to(self.device), **self.kwargs)
            texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
            for i, text in zip(where, texts, strict=True):
                out[i] = check_caption(text, paths[i])
        return out
