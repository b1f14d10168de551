"""AudioLDM2 (diffusers) as an M2UGen decoder, conditioned on projector states.

The projector emits one token holding the T5 and GPT-2 states, flattened (the layout
is `decoders.audioldm2_parts`, ORIGINAL_M2UGEN.md §4); they become `prompt_embeds` and
`generated_prompt_embeds`. The negative prompt "Low quality." is encoded by the
pipeline itself and padded to the positive shape (STACK.md).

Sampling: DPM-Solver++ (2nd-order multistep) at 20 steps by default, which diffusers'
AudioLDM2 users take for < 1 s per 10 s clip on a GPU; `scheduler="ddim"` is the published
sampler (the checkpoint's own DDIM, 200 steps). Both are built per call from the
checkpoint's scheduler config (its noise schedule), so concurrent calls never share a
scheduler's state (timesteps, DPM-Solver's history of model outputs).

Length: AudioLDM2 has no window and no continuation here; any `seconds` (up to music.py's
MAX_SECONDS) is one pass over a longer latent. It was trained on 10 s clips
(`TRAINED_SECONDS`), so longer pieces are rendered, with a warning, but may lose structure.

Edits that keep the song (`sources`, SDEdit): the source's log-mel spectrogram (AudioLDM's
own STFT: 1024-point Hann window, the vocoder's hop and mel bins, fmax = rate / 2,
natural log floored at 1e-5, the waveform peak-normalised to 0.5 as in AudioLDM's training)
is encoded by the pipeline's VAE (its mean), noised to the first timestep of the last
`edit_strength` part of the sampler's schedule, and denoised from there under the new
conditioning: the pipeline's own loop, with a sampler whose schedule starts there.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from diffusers import AudioLDM2Pipeline, DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import GPT2LMHeadModel

from m2ugen.errors import ChatError, ConfigError
from m2ugen.modules.decoders import (
    EDIT_STRENGTH,
    SCHEDULER_STEPS,
    SCHEDULERS,
    TARGET_SCALE,
    MusicDecoder,
    audioldm2_cond_shape,
    audioldm2_parts,
    conditioning_lengths,
    length_mask,
)

NEGATIVE_PROMPT = "Low quality."
TRAINED_SECONDS = 10.0  # AudioLDM2's training clips

MEL_FFT = 1024  # AudioLDM's STFT filter and window length at 16 kHz
MEL_FLOOR = 1e-5  # its log-compression floor

log = logging.getLogger(__name__)


class _EditSchedule:
    """A sampler that runs only the last `strength` part of its schedule (SDEdit): after
    `set_timesteps(n)` its timesteps (and DPM-Solver's matching sigmas) start at step
    n - int(n × strength), as diffusers' image-to-image pipelines start theirs."""

    strength = 1.0

    def set_timesteps(self, num_inference_steps: int, *args, **kwargs) -> None:
        super().set_timesteps(num_inference_steps, *args, **kwargs)
        start = (num_inference_steps - int(num_inference_steps * self.strength)) * self.order
        self.timesteps = self.timesteps[start:]
        if getattr(self, "sigmas", None) is not None:  # DPM-Solver: one sigma per timestep + 1
            self.sigmas = self.sigmas[start:]


class _EditDDIM(_EditSchedule, DDIMScheduler):
    pass


class _EditDPM(_EditSchedule, DPMSolverMultistepScheduler):
    pass


def log_mel(wave: np.ndarray, sample_rate: int, n_mels: int, hop: int) -> np.ndarray:
    """(frames, n_mels) AudioLDM log-mel spectrogram of a mono waveform (module docstring)."""
    import librosa  # heavy (numba): only edits need it

    wave = np.asarray(wave, dtype=np.float32)
    wave = wave - wave.mean()
    wave = 0.5 * wave / (np.abs(wave).max() + 1e-8)
    pad = (MEL_FFT - hop) // 2
    wave = np.pad(wave, (pad, pad), mode="reflect")
    magnitude = np.abs(librosa.stft(wave, n_fft=MEL_FFT, hop_length=hop, win_length=MEL_FFT,
                                    window="hann", center=False))
    basis = librosa.filters.mel(sr=sample_rate, n_fft=MEL_FFT, n_mels=n_mels, fmin=0.0,
                                fmax=sample_rate / 2)
    return np.log(np.maximum(basis @ magnitude, MEL_FLOOR)).T.astype(np.float32)


class AudioLDM2Decoder(MusicDecoder):
    kind = "audioldm2"

    def __init__(self, pipe: AudioLDM2Pipeline) -> None:
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        self.schedule = dict(pipe.scheduler.config)  # the checkpoint's noise schedule

    def make_scheduler(self, name: str | None = None,
                       strength: float | None = None) -> SchedulerMixin:
        """A fresh sampler on the checkpoint's noise schedule: dpm++ (None) or ddim; with a
        `strength`, one that runs only the last `strength` part of it (an edit)."""
        name = name or SCHEDULERS[0]
        edit = strength is not None
        if name == "ddim":
            sched = (_EditDDIM if edit else DDIMScheduler).from_config(self.schedule)
        elif name == "dpm++":
            sched = (_EditDPM if edit else DPMSolverMultistepScheduler).from_config(
                self.schedule, algorithm_type="dpmsolver++", solver_order=2)
        else:
            raise ConfigError(f"scheduler {name!r} is unknown; use one of "
                              f"{', '.join(SCHEDULERS)}")
        if edit:
            sched.strength = float(strength)
        return sched

    def sampler(self, scheduler: str | None = None, steps: int | None = None,
                strength: float | None = None) -> tuple[AudioLDM2Pipeline, int]:
        """(the pipeline with its own fresh `scheduler`, steps: None = that one's default).
        The pipeline shares every model with `self.pipe`; only the scheduler is new."""
        sched = self.make_scheduler(scheduler, strength)
        pipe = AudioLDM2Pipeline(**{**self.pipe.components, "scheduler": sched})
        pipe.set_progress_bar_config(disable=True)
        return pipe, steps or SCHEDULER_STEPS[scheduler or SCHEDULERS[0]]

    @classmethod
    def from_pretrained(cls, path: str, device: torch.device,
                        dtype: torch.dtype) -> AudioLDM2Decoder:
        # some hub repos store a bare GPT2Model, which the pipeline cannot generate with
        # under transformers 5; the LM-head class loads the same weights (tied head)
        lm = GPT2LMHeadModel.from_pretrained(path, subfolder="language_model", dtype=dtype)
        pipe = AudioLDM2Pipeline.from_pretrained(path, language_model=lm, dtype=dtype)
        return cls(pipe.to(device))

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.vocoder.config.sampling_rate)

    @property
    def _widths(self) -> tuple[int, int]:
        return (int(self.pipe.text_encoder_2.config.d_model),
                int(self.pipe.language_model.config.n_embd))

    @property
    def t5_shape(self) -> tuple[int, int]:
        return audioldm2_parts(*self._widths)[0]

    @property
    def gpt2_shape(self) -> tuple[int, int]:
        return audioldm2_parts(*self._widths)[1]

    @property
    def cond_shape(self) -> tuple[int, int]:
        return audioldm2_cond_shape(*self._widths)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T5 states (B, L, Wt) padded to L, their mask (B, L), GPT-2 states (B, 8, Wg)).
        Each text is encoded alone: the pipeline's GPT-2 continues the T5 states, padding
        included, so a caption's GPT-2 states would depend on what it is batched with."""
        if len(texts) > 1:
            parts = [self._encode([t]) for t in texts]
            return tuple(torch.cat(p) for p in zip(*parts, strict=True))
        embeds, mask, generated = self.pipe.encode_prompt(
            texts, self.device, num_waveforms_per_prompt=1, do_classifier_free_guidance=False)
        length = self.t5_shape[0]
        pad = length - embeds.shape[1]
        if pad > 0:
            embeds = torch.nn.functional.pad(embeds, (0, 0, 0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad))
        return embeds[:, :length], mask[:, :length], generated

    def _split(self, conditioning: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (lt, wt), (lg, wg) = self.t5_shape, self.gpt2_shape
        flat = conditioning.reshape(conditioning.shape[0], -1)
        return flat[:, : lt * wt].view(-1, lt, wt), flat[:, lt * wt:].view(-1, lg, wg)

    def text_states(self, conditioning: torch.Tensor) -> torch.Tensor:
        return self._split(conditioning)[0]

    @torch.no_grad()
    def target(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask, generated = self._encode(captions)
        b = embeds.shape[0]
        target = torch.cat([embeds.reshape(b, -1), generated.reshape(b, -1)], dim=1)[:, None]
        t5_mask = mask.bool()[:, :, None].expand_as(embeds).reshape(b, -1)
        full = torch.cat([t5_mask, torch.ones(b, generated[0].numel(), dtype=torch.bool,
                                              device=t5_mask.device)], dim=1)[:, None]
        return TARGET_SCALE * target, full

    def _mel_frames(self, seconds: float) -> int:
        """The pipeline's mel length for `seconds` (rounded up to the VAE's factor)."""
        hop = int(np.prod(self.pipe.vocoder.config.upsample_rates))
        height = int(seconds / (hop / self.sample_rate))
        factor = self.pipe.vae_scale_factor
        return int(np.ceil(height / factor)) * factor

    def _latents(self, sources: list[np.ndarray], seconds: float) -> torch.Tensor:
        """(B, C, frames / f, mels / f) VAE latents (the mean, scaled) of the sources."""
        vocoder = self.pipe.vocoder.config
        n_mels, hop = int(vocoder.model_in_dim), int(np.prod(vocoder.upsample_rates))
        frames = self._mel_frames(seconds)
        mels = []
        for source in sources:
            mel = log_mel(self.fit_source(source, seconds), self.sample_rate, n_mels, hop)
            mel = mel[:frames]
            if mel.shape[0] < frames:  # the STFT's last hop: pad with silence
                mel = np.pad(mel, ((0, frames - mel.shape[0]), (0, 0)),
                             constant_values=np.log(MEL_FLOOR))
            mels.append(mel)
        vae = self.pipe.vae
        x = torch.from_numpy(np.stack(mels))[:, None].to(self.device, vae.dtype)
        return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor

    @torch.no_grad()
    def reconstruct(self, sources: list[np.ndarray], seconds: float) -> np.ndarray:
        latents = self._latents(sources, seconds)
        mel = self.pipe.vae.decode(latents / self.pipe.vae.config.scaling_factor).sample
        audio = self.pipe.mel_spectrogram_to_waveform(mel)
        return self.fit_length(audio.float().cpu().numpy().reshape(len(sources), -1), seconds)

    def _run(self, seconds: float, guidance: float, seed: int, steps: int | None,
             scheduler: str | None, sources: list[np.ndarray] | None, edit_strength: float,
             batch: int, **conditioning) -> np.ndarray:
        if seconds > TRAINED_SECONDS:
            log.warning("AudioLDM2 renders %.0f s in one pass (no windowing; it was trained on "
                        "%.0f s clips, so a long piece may lose structure)", seconds,
                        TRAINED_SECONDS)
        edit = sources is not None and edit_strength < 1.0
        pipe, steps = self.sampler(scheduler, steps, edit_strength if edit else None)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        if edit:
            if len(sources) != batch:
                raise ValueError(f"{len(sources)} sources for a batch of {batch}")
            if int(steps * edit_strength) < 1:
                raise ChatError(f"edit_strength={edit_strength:g} leaves none of the {steps} "
                                f"denoising steps; raise it to at least {1 / steps:.3g} or "
                                "raise steps")
            init = self._latents(sources, seconds)
            pipe.scheduler.set_timesteps(steps)  # the pipeline sets the same ones again
            start = pipe.scheduler.timesteps[:1]
            noise = torch.randn(init.shape, generator=gen, dtype=torch.float32)
            noisy = DDIMScheduler.from_config(self.schedule).add_noise(
                init.float().cpu(), noise, start)
            conditioning["latents"] = noisy.to(self.device, self.pipe.unet.dtype)
        out = pipe(audio_length_in_s=seconds, num_inference_steps=steps,
                   guidance_scale=guidance, generator=gen, num_waveforms_per_prompt=1,
                   output_type="np", **conditioning)
        return self.fit_length(np.asarray(out.audios).reshape(out.audios.shape[0], -1), seconds)

    @torch.no_grad()
    def generate(self, conditioning: torch.Tensor, seconds: float, guidance: float, seed: int,
                 steps: int | None = None, scheduler: str | None = None,
                 sources: list[np.ndarray] | None = None,
                 edit_strength: float = EDIT_STRENGTH) -> np.ndarray:
        dtype = self.pipe.unet.dtype
        embeds, generated = self._split(conditioning.to(self.device, dtype))
        b = embeds.shape[0]
        neg_embeds, neg_mask, neg_generated = self._encode([NEGATIVE_PROMPT] * b)
        lengths = conditioning_lengths(embeds)
        log.info("the decoder hears %s of the %d T5 positions",
                 "/".join(str(n) for n in lengths.tolist()), embeds.shape[1])
        return self._run(seconds, guidance, seed, steps, scheduler, sources, edit_strength, b,
                         prompt_embeds=embeds,  # the UNet hears the caption positions
                         attention_mask=length_mask(lengths, embeds.shape[1]),
                         generated_prompt_embeds=generated,
                         negative_prompt_embeds=neg_embeds.to(dtype),
                         negative_attention_mask=neg_mask,
                         negative_generated_prompt_embeds=neg_generated.to(dtype))

    @torch.no_grad()
    def generate_from_text(self, texts: list[str], seconds: float, guidance: float, seed: int,
                           steps: int | None = None, scheduler: str | None = None,
                           sources: list[np.ndarray] | None = None,
                           edit_strength: float = EDIT_STRENGTH) -> np.ndarray:
        return self._run(seconds, guidance, seed, steps, scheduler, sources, edit_strength,
                         len(texts), prompt=texts,
                         negative_prompt=[NEGATIVE_PROMPT] * len(texts))
