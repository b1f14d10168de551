"""MusicGen (transformers) as an M2UGen decoder, conditioned on projector states.

Classifier-free guidance with external conditioning: `generate()` only builds the
unconditional half itself for text prompts, so we pass `[cond; zeros]` with the mask
`[ones; zeros]` and a dummy (B, 1) input (STACK.md). With the same seed this is exactly
what the text-prompt path does after its text encoder.

Long pieces (`seconds` beyond the decoder's window, `window_seconds`: the config field
`window_seconds` of the MusicGen folder, else 30 s, what MusicGen was trained on): the
first window is today's single pass; each next window is conditioned on the same states and
continues the piece's last `CONTEXT_FRACTION` × window of codes (the audio prompt, given as
`decoder_input_ids`), adding the rest of a window of new codes. The codes are stitched at
token level and decoded by EnCodec in one pass, so there is no seam in the waveform.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutput

from m2ugen.modules.decoders import MUSICGEN_TOKENS, TARGET_SCALE, MusicDecoder, musicgen_cond_shape

log = logging.getLogger(__name__)

WINDOW_SECONDS = 30.0  # MusicGen was trained on 30 s clips; a folder's config may say less
CONTEXT_FRACTION = 0.4  # each next window continues the last 40 % of one (audiocraft: 12 of 30 s)


class _Codes(StoppingCriteria):
    """Keeps the (B·K, L) delayed codes `generate()` has sampled (it returns audio only);
    never stops anything."""

    def __init__(self) -> None:
        self.ids: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.ids = input_ids
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class MusicGenDecoder(MusicDecoder):
    kind = "musicgen"

    def __init__(self, model: MusicgenForConditionalGeneration, processor) -> None:
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device,
                        dtype: torch.dtype) -> MusicGenDecoder:
        model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
        # an auto_map in the processor configs is refused, never run (nor asked about)
        return cls(model, AutoProcessor.from_pretrained(path, trust_remote_code=False))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        enc = self.model.config.audio_encoder
        return enc.sampling_rate / float(np.prod(enc.upsampling_ratios))

    @property
    def num_codebooks(self) -> int:
        return int(self.model.decoder.config.num_codebooks)

    @property
    def window_seconds(self) -> float:
        """The longest piece one pass makes; longer ones are rendered window by window."""
        return float(getattr(self.model.config, "window_seconds", None) or WINDOW_SECONDS)

    @property
    def cond_shape(self) -> tuple[int, int]:
        return musicgen_cond_shape(self.model.text_encoder.config.d_model)

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.processor.tokenizer(texts, padding="max_length", max_length=MUSICGEN_TOKENS,
                                       truncation=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def target(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self._tokens(captions)
        states = self.model.text_encoder(**enc).last_hidden_state  # (B, 128, W)
        mask = enc["attention_mask"].bool()[:, :, None].expand_as(states)
        return TARGET_SCALE * states, mask

    def _max_new_tokens(self, seconds: float) -> int:
        # the delay pattern costs K − 1 steps: codes T = max_new_tokens + 1 − K
        return int(round(seconds * self.frame_rate)) + self.num_codebooks - 1

    def _rng(self):
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _external(self, conditioning: torch.Tensor, guidance: float) -> dict:
        """generate() kwargs for external conditioning, with the unconditional half."""
        b = conditioning.shape[0]
        dtype = next(self.model.parameters()).dtype
        cond = conditioning.to(self.device, dtype)
        mask = torch.ones(cond.shape[:2], dtype=torch.long, device=self.device)
        if guidance > 1:  # the unconditional half: zero states, fully masked
            cond = torch.cat([cond, torch.zeros_like(cond)])
            mask = torch.cat([mask, torch.zeros_like(mask)])
        return {"input_ids": torch.zeros(b, 1, dtype=torch.long, device=self.device),
                "encoder_outputs": BaseModelOutput(last_hidden_state=cond),
                "attention_mask": mask, "guidance_scale": guidance if guidance > 1 else None,
                "do_sample": True}

    def _codes(self, inputs: dict, batch: int, frames: int,
               prompt: torch.Tensor | None) -> torch.Tensor:
        """(B, K, P + frames) codes: `prompt` (B, K, P) continued by `frames` new ones."""
        k = self.num_codebooks
        record = _Codes()
        extra = {}
        if prompt is not None:
            extra["decoder_input_ids"] = prompt.reshape(batch * k, -1)
        self.model.generate(**inputs, **extra, max_new_tokens=frames + k - 1,
                            stopping_criteria=StoppingCriteriaList([record]))
        p = 0 if prompt is None else prompt.shape[-1]
        total = p + frames
        # delayed layout: codebook c's frame t sits at position t + 1 + c (position 0: start)
        ids = record.ids.reshape(batch, k, -1)
        codes = torch.stack([ids[:, c, 1 + c: 1 + c + total] for c in range(k)], dim=1)
        if prompt is not None:  # generate() forces the prompt; the raw ids may not hold it
            codes[:, :, :p] = prompt
        return codes

    def _long(self, inputs: dict, batch: int, seconds: float) -> np.ndarray:
        """Windowed continuation (module docstring); the caller holds the seeded RNG."""
        frame_rate = self.frame_rate
        window = max(2, int(round(self.window_seconds * frame_rate)))
        context = max(1, int(round(CONTEXT_FRACTION * window)))
        total = int(math.ceil(seconds * frame_rate))
        n_windows = 1 + math.ceil(max(0, total - window) / (window - context))
        codes = self._codes(inputs, batch, window, None)
        log.info("music window 1/%d (%.1f s)", n_windows, window / frame_rate)
        i = 1
        while codes.shape[-1] < total:
            i += 1
            new = min(window - context, total - codes.shape[-1])
            step = self._codes(inputs, batch, new, codes[:, :, -context:])
            codes = torch.cat([codes, step[:, :, context:]], dim=-1)
            log.info("music window %d/%d (%.1f of %.1f s)", i, n_windows,
                     codes.shape[-1] / frame_rate, seconds)
        audio = self.model.audio_encoder.decode(codes[None], [None] * batch).audio_values
        return self.fit_length(audio[:, 0].float().cpu().numpy(), seconds)

    @torch.no_grad()
    def generate(self, conditioning: torch.Tensor, seconds: float, guidance: float, seed: int,
                 steps: int | None = None, scheduler: str | None = None) -> np.ndarray:
        b = conditioning.shape[0]
        inputs = self._external(conditioning, guidance)
        with self._rng():
            torch.manual_seed(seed)
            if seconds > self.window_seconds:
                return self._long(inputs, b, seconds)
            audio = self.model.generate(**inputs, max_new_tokens=self._max_new_tokens(seconds))
        return self.fit_length(audio[:, 0].float().cpu().numpy(), seconds)

    @torch.no_grad()
    def generate_from_text(self, texts: list[str], seconds: float, guidance: float, seed: int,
                           steps: int | None = None,
                           scheduler: str | None = None) -> np.ndarray:
        enc = self.processor(text=texts, padding=True, return_tensors="pt").to(self.device)
        inputs = {**enc, "do_sample": True, "guidance_scale": guidance if guidance > 1 else None}
        with self._rng():
            torch.manual_seed(seed)
            if seconds > self.window_seconds:
                return self._long(inputs, len(texts), seconds)
            audio = self.model.generate(**inputs, max_new_tokens=self._max_new_tokens(seconds))
        return self.fit_length(audio[:, 0].float().cpu().numpy(), seconds)
