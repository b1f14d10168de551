"""MusicGen (transformers) as an M2UGen decoder, conditioned on projector states.

Classifier-free guidance with external conditioning: `generate()` only builds the
unconditional half itself for text prompts, so we pass `[cond; zeros]` with the mask
`[ones; zeros]` and a dummy (B, 1) input (STACK.md). With the same seed this is exactly
what the text-prompt path does after its text encoder.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from m2ugen.modules.decoders import MUSICGEN_TOKENS, TARGET_SCALE, MusicDecoder, musicgen_cond_shape


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

    @torch.no_grad()
    def generate(self, conditioning: torch.Tensor, seconds: float, guidance: float, seed: int,
                 steps: int | None = None, scheduler: str | None = None) -> np.ndarray:
        b = conditioning.shape[0]
        dtype = next(self.model.parameters()).dtype
        cond = conditioning.to(self.device, dtype)
        mask = torch.ones(cond.shape[:2], dtype=torch.long, device=self.device)
        if guidance > 1:  # the unconditional half: zero states, fully masked
            cond = torch.cat([cond, torch.zeros_like(cond)])
            mask = torch.cat([mask, torch.zeros_like(mask)])
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            audio = self.model.generate(
                input_ids=torch.zeros(b, 1, dtype=torch.long, device=self.device),
                encoder_outputs=BaseModelOutput(last_hidden_state=cond), attention_mask=mask,
                guidance_scale=guidance if guidance > 1 else None, do_sample=True,
                max_new_tokens=self._max_new_tokens(seconds))
        return self.fit_length(audio[:, 0].float().cpu().numpy(), seconds)

    @torch.no_grad()
    def generate_from_text(self, texts: list[str], seconds: float, guidance: float, seed: int,
                           steps: int | None = None,
                           scheduler: str | None = None) -> np.ndarray:
        enc = self.processor(text=texts, padding=True, return_tensors="pt").to(self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            audio = self.model.generate(**enc, do_sample=True,
                                        guidance_scale=guidance if guidance > 1 else None,
                                        max_new_tokens=self._max_new_tokens(seconds))
        return self.fit_length(audio[:, 0].float().cpu().numpy(), seconds)
