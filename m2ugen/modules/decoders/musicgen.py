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

Edits that keep the song (`sources`): the source's first (1 - edit_strength) of the length
is encoded by EnCodec and given as the audio prompt, so the piece starts as the source
does and continues under the new conditioning (window by window when it is long).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutput

from m2ugen.modules.decoders import (
    EDIT_STRENGTH,
    MUSICGEN_TOKENS,
    TARGET_SCALE,
    MusicDecoder,
    length_mask,
    musicgen_cond_shape,
)

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
        self.tokenizer = processor.tokenizer
        self.audio_features = processor.feature_extractor  # EnCodec's: audio → input values

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
        """All the decoder's codebooks: a stereo MusicGen interleaves left and right (2K)."""
        return int(self.model.decoder.config.num_codebooks)

    @property
    def channels(self) -> int:
        """1 (mono) or 2 (stereo: codebooks 0, 2, … are the left channel, 1, 3, … the right,
        each decoded by the mono EnCodec; transformers' `audio_channels`)."""
        return int(self.model.decoder.config.audio_channels)

    @property
    def _delays(self) -> int:
        """Codebooks per channel: the delay pattern staggers these (K − 1 extra steps)."""
        return self.num_codebooks // self.channels

    @property
    def window_seconds(self) -> float:
        """The longest piece one pass makes; longer ones are rendered window by window."""
        return float(getattr(self.model.config, "window_seconds", None) or WINDOW_SECONDS)

    @property
    def cond_shape(self) -> tuple[int, int]:
        return musicgen_cond_shape(self.model.text_encoder.config.d_model)

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding="max_length", max_length=MUSICGEN_TOKENS,
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
        return int(round(seconds * self.frame_rate)) + self._delays - 1

    def _rng(self):
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _heard(self, conditioning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(states, mask) as MusicGen hears a batch of captions: cut to the longest row's
        caption positions (`lengths`), each row's padding zeroed and masked — what the
        text path gives after its text encoder."""
        dtype = next(self.model.parameters()).dtype
        cond = conditioning.to(self.device, dtype)
        lengths = self.lengths(cond)
        log.info("the decoder hears %s of the %d conditioning positions",
                 "/".join(str(n) for n in lengths.tolist()), cond.shape[1])
        mask = length_mask(lengths, int(lengths.max()))
        return cond[:, : mask.shape[1]] * mask[..., None].to(dtype), mask

    def _external(self, conditioning: torch.Tensor, guidance: float) -> dict:
        """generate() kwargs for external conditioning, with the unconditional half."""
        b = conditioning.shape[0]
        cond, mask = self._heard(conditioning)
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
        self.model.generate(**inputs, **extra, max_new_tokens=frames + self._delays - 1,
                            stopping_criteria=StoppingCriteriaList([record]))
        p = 0 if prompt is None else prompt.shape[-1]
        total = p + frames
        # delayed layout: codebook c's frame t sits at position t + 1 + d (position 0:
        # start), d = c, or c // 2 in stereo (a left and a right codebook share each delay)
        ids = record.ids.reshape(batch, k, -1)
        ch = self.channels
        codes = torch.stack([ids[:, c, 1 + c // ch: 1 + c // ch + total] for c in range(k)],
                            dim=1)
        if prompt is not None:  # generate() forces the prompt; the raw ids may not hold it
            codes[:, :, :p] = prompt
        return codes

    def _long(self, inputs: dict, batch: int, seconds: float,
              prompt: torch.Tensor | None = None) -> np.ndarray:
        """Windowed continuation (module docstring) of `prompt` (B, K, P) codes or of
        nothing; the caller holds the seeded RNG. The first window continues the whole
        prompt, the next ones the last CONTEXT_FRACTION of a window."""
        frame_rate = self.frame_rate
        window = max(2, int(round(self.window_seconds * frame_rate)))
        context = max(1, int(round(CONTEXT_FRACTION * window)))
        total = int(math.ceil(seconds * frame_rate))
        have = 0 if prompt is None else prompt.shape[-1]
        first = min(window - min(have, window - 1), total - have)
        n_windows = 1 + math.ceil(max(0, total - have - first) / (window - context))
        codes = prompt
        for i in range(1, n_windows + 1):
            have = 0 if codes is None else codes.shape[-1]
            keep = min(have, window - 1) if i == 1 else context
            new = min(window - keep, total - have)
            step = self._codes(inputs, batch, new, codes[:, :, have - keep:] if keep else None)
            codes = step if codes is None else torch.cat([codes, step[:, :, keep:]], dim=-1)
            log.info("music window %d/%d (%.1f of %.1f s)", i, n_windows,
                     codes.shape[-1] / frame_rate, seconds)
        return self._decode(codes, seconds)

    def _decode(self, codes: torch.Tensor, seconds: float) -> np.ndarray:
        """(B, K, T) codes → waveforms exactly `seconds` long (`_output`); stereo: each
        channel's codebooks through EnCodec, as transformers' generate() does."""
        ch = self.channels
        audio = torch.cat([self.model.audio_encoder.decode(
            codes[None, :, c::ch], [None] * codes.shape[0]).audio_values for c in range(ch)],
            dim=1)  # (B, channels, samples)
        return self._output(audio, seconds)

    def _output(self, audio: torch.Tensor, seconds: float) -> np.ndarray:
        """(B, channels, samples) decoder audio → (B, samples) mono or (B, samples, 2)
        stereo float32 (MusicDecoder.generate's convention), exactly `seconds` long."""
        wav = audio.float().cpu().numpy()
        if wav.shape[1] == 1:
            return self.fit_length(wav[:, 0], seconds)
        return np.stack([self.fit_length(wav[:, c], seconds) for c in range(wav.shape[1])],
                        axis=-1)

    def _encode(self, sources: list[np.ndarray], seconds: float) -> torch.Tensor:
        """(B, K, frames) EnCodec codes of the sources, each cut or padded to `seconds`;
        stereo: the (mono) source's codes for both channels, interleaved, as transformers'
        MusicGen turns a mono audio prompt into a stereo one."""
        clips = [self.fit_source(s, seconds) for s in sources]
        feats = self.audio_features(clips, sampling_rate=self.sample_rate, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        values = feats["input_values"].to(self.device, dtype)
        codes = self.model.audio_encoder.encode(values, feats.get("padding_mask")).audio_codes
        frames = int(math.ceil(seconds * self.frame_rate))
        codes = codes[0, :, :, :frames]  # (1 chunk, B, K, T) → (B, K, frames)
        return codes.repeat_interleave(self.channels, dim=1)  # (B, channels·K, frames)

    def _prompt(self, sources: list[np.ndarray] | None, batch: int, seconds: float,
                edit_strength: float) -> torch.Tensor | None:
        """The audio prompt of an edit: codes of the sources' first (1 - s) × seconds."""
        if sources is None:
            return None
        if len(sources) != batch:
            raise ValueError(f"{len(sources)} sources for a batch of {batch}")
        total = int(math.ceil(seconds * self.frame_rate))
        frames = min(int(round((1.0 - edit_strength) * total)), total - 1)
        if frames < 1:  # strength 1 (or a piece of one frame): nothing of the source is kept
            return None
        return self._encode(sources, frames / self.frame_rate)[:, :, :frames]

    @torch.no_grad()
    def reconstruct(self, sources: list[np.ndarray], seconds: float) -> np.ndarray:
        return self._decode(self._encode(sources, seconds), seconds)

    def _render(self, inputs: dict, batch: int, seconds: float,
                prompt: torch.Tensor | None) -> np.ndarray:
        """One pass when it fits a window and continues nothing, else `_long`."""
        if prompt is None and seconds <= self.window_seconds:
            audio = self.model.generate(**inputs, max_new_tokens=self._max_new_tokens(seconds))
            return self._output(audio, seconds)
        return self._long(inputs, batch, seconds, prompt)

    def _state_inputs(self, conditioning: torch.Tensor, guidance: float,
                      sources: list[np.ndarray] | None, seconds: float,
                      edit_strength: float) -> tuple[dict, torch.Tensor | None]:
        """(generate() kwargs, audio prompt) for conditioning states and the sources."""
        b = conditioning.shape[0]
        return self._external(conditioning, guidance), \
            self._prompt(sources, b, seconds, edit_strength)

    def _text_inputs(self, texts: list[str], guidance: float, sources: list[np.ndarray] | None,
                     seconds: float, edit_strength: float) -> tuple[dict, torch.Tensor | None]:
        """(generate() kwargs, audio prompt) for text prompts (the published path)."""
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        inputs = {**enc, "do_sample": True, "guidance_scale": guidance if guidance > 1 else None}
        return inputs, self._prompt(sources, len(texts), seconds, edit_strength)

    def _seeded(self, inputs: dict, prompt: torch.Tensor | None, batch: int, seconds: float,
                seed: int) -> np.ndarray:
        with self._rng():
            torch.manual_seed(seed)
            return self._render(inputs, batch, seconds, prompt)

    @torch.no_grad()
    def generate(self, conditioning: torch.Tensor, seconds: float, guidance: float, seed: int,
                 steps: int | None = None, scheduler: str | None = None,
                 sources: list[np.ndarray] | None = None,
                 edit_strength: float = EDIT_STRENGTH) -> np.ndarray:
        inputs, prompt = self._state_inputs(conditioning, guidance, sources, seconds,
                                            edit_strength)
        return self._seeded(inputs, prompt, conditioning.shape[0], seconds, seed)

    @torch.no_grad()
    def generate_from_text(self, texts: list[str], seconds: float, guidance: float, seed: int,
                           steps: int | None = None, scheduler: str | None = None,
                           sources: list[np.ndarray] | None = None,
                           edit_strength: float = EDIT_STRENGTH) -> np.ndarray:
        inputs, prompt = self._text_inputs(texts, guidance, sources, seconds, edit_strength)
        return self._seeded(inputs, prompt, len(texts), seconds, seed)
