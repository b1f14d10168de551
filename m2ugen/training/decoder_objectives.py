"""The decoders' training objectives, as each decoder was trained.

MusicGen: the clip's EnCodec codes (B, K, T) are laid out in the delay pattern (codebook
k shifted right by k + 1 behind the start token; `delayed_codes`, built with the model's
own `build_delay_pattern_mask`), the decoder LM reads the sequence conditioned on the
caption's T5 states and predicts the next position; cross-entropy over the codebooks on
the positions that hold a code of the clip (not the delay padding, not the zero padding
of a short clip).

AudioLDM2: the clip's log-mel spectrogram (`decoders.audioldm2.log_mel`, AudioLDM's own
front end, the one edits use) goes through the VAE once (the latent
distribution is cached); each step samples a latent, draws noise and a timestep, noises
the latent with the scheduler's own `add_noise` (DDPM training noise on the checkpoint's
schedule) and regresses the UNet's prediction on the scheduler's target (the noise for
epsilon-prediction, `get_velocity` for v-prediction), conditioned on the pipeline's own
encoders' T5 and GPT-2 states of the caption (each caption encoded alone). MSE over the
latent frames of the clip.

Condition dropout (classifier-free guidance): a dropped caption becomes what the decoder
renders unconditionally with — MusicGen: zero states behind an all-zero mask (what
`generate()` uses for its unconditional half); AudioLDM2: the empty prompt (the
pipeline's default negative prompt).

Randomness per example (dropout draw, noise, timestep, latent sample) comes from a
generator seeded by (seed, step, the example's position in the global batch), so N ranks
draw what one rank draws and a resumed run what the uninterrupted one drew.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from m2ugen.errors import ConfigError
from m2ugen.modules.decoders import MUSICGEN_TOKENS
from m2ugen.modules.decoders.audioldm2 import MEL_FFT, MEL_FLOOR, log_mel

# AudioLDM2 captions whose conditioning is kept, in host memory (full size: up to ~2 MB each)
CONDITIONING_CACHE = 1024


def example_generator(seed: int, step: int, position: int) -> torch.Generator:
    """The generator of one example's randomness in one step (see the module docstring)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 65_537 + position)
                                         % (2 ** 63))


def dropped(gens: list[torch.Generator], p: float) -> torch.Tensor:
    """(B,) bool: which captions are replaced by the unconditional one."""
    return torch.tensor([bool(torch.rand((), generator=g) < p) for g in gens])


# ---------------------------------------------------------------- MusicGen


def delayed_codes(lm, codes: torch.Tensor, valid: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (B, K, T) and valid frames (B,) → the delayed sequence (B, K, T + K) and the
    mask of its positions holding a valid code (B, K, T + K).

    Position 0 is the start token; codebook k's frame t sits at position t + 1 + k; the
    rest is the pad token (`lm`: MusicGen's decoder LM, whose `build_delay_pattern_mask`
    builds the layout generation uses)."""
    b, k, t = codes.shape
    pad = int(lm.config.pad_token_id)
    start = torch.full((b, k, 1), int(lm.config.bos_token_id), dtype=codes.dtype,
                       device=codes.device)
    ids = torch.cat([start, codes], dim=-1).reshape(b * k, t + 1)
    _, pattern = lm.build_delay_pattern_mask(ids, pad_token_id=pad, max_length=t + k)
    seq = pattern.reshape(b, k, t + k)
    pos = torch.arange(t + k, device=codes.device)
    frame = pos[None, None, :] - 1 - torch.arange(k, device=codes.device)[None, :, None]
    mask = (frame >= 0) & (frame < valid.to(codes.device)[:, None, None])
    return seq, mask


class MusicGenObjective(nn.Module):
    """Next-code cross-entropy of MusicGen's decoder LM (its T5 and EnCodec frozen)."""

    kind = "musicgen"

    def __init__(self, decoder, cond_dropout: float) -> None:
        super().__init__()
        if int(getattr(decoder.model.decoder.config, "audio_channels", 1)) != 1:
            raise ConfigError("train-decoder fine-tunes mono MusicGen only (this one is "
                              "stereo); use a mono checkpoint such as musicgen-small")
        self.model = decoder.model
        self.tokenizer = decoder.processor.tokenizer
        self.cond_dropout = cond_dropout

    def fsdp_groups(self) -> tuple[list[nn.Module], set[nn.Parameter]]:
        """strategy=fsdp: each LM layer, then the whole MusicGen (renders call it directly)
        are sharded; T5 and EnCodec, which run outside the training forward, stay whole."""
        layers = list(self.model.decoder.model.decoder.layers)
        whole = set(self.model.text_encoder.parameters()) | set(
            self.model.audio_encoder.parameters())
        return [*layers, self.model], whole

    @torch.no_grad()
    def prepare(self, batch: dict, gens: list[torch.Generator]) -> dict:
        """Frozen work for a batch: conditioning (dropout applied), delayed codes, mask."""
        device = self.model.device
        enc = self.tokenizer(batch["captions"], padding=True, truncation=True,
                             max_length=MUSICGEN_TOKENS, return_tensors="pt").to(device)
        states = self.model.text_encoder(**enc).last_hidden_state  # (B, L, W)
        mask = enc["attention_mask"].clone()
        drop = dropped(gens, self.cond_dropout).to(device)
        states = states.masked_fill(drop[:, None, None], 0.0)
        mask = mask.masked_fill(drop[:, None], 0)
        seq, valid = delayed_codes(self.model.decoder, batch["codes"].to(device),
                                   batch["valid"])
        return {"states": states, "mask": mask, "seq": seq, "target_mask": valid[..., 1:],
                "count": int(valid[..., 1:].sum()), "dropped": int(drop.sum())}

    def forward(self, states: torch.Tensor, mask: torch.Tensor, seq: torch.Tensor,
                target_mask: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the valid codes (normalised by the caller)."""
        b, k, length = seq.shape
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                         attention_mask=mask,
                         decoder_input_ids=seq[..., :-1].reshape(b * k, length - 1))
        logits = out.logits.reshape(b, k, length - 1, -1)
        return F.cross_entropy(logits[target_mask].float(), seq[..., 1:][target_mask],
                               reduction="sum")


@torch.no_grad()
def musicgen_codes(decoder, wave: np.ndarray, seconds: float) -> tuple[torch.Tensor, int]:
    """A waveform at the decoder's rate → (its EnCodec codes (K, T) for a clip of exactly
    `seconds`, the number of frames of real audio)."""
    model = decoder.model
    n = int(round(seconds * decoder.sample_rate))
    real = min(len(wave), n)
    clip = np.zeros(n, dtype=np.float32)
    clip[:real] = wave[:real]
    x = torch.from_numpy(clip)[None, None].to(model.device, next(model.parameters()).dtype)
    codes = model.audio_encoder.encode(x).audio_codes[0, 0]  # (K, T)
    hop = n / codes.shape[-1]
    return codes.long().cpu(), int(math.ceil(real / hop))


# ---------------------------------------------------------------- AudioLDM2


def audioldm2_frames(decoder, seconds: float) -> int:
    """Mel frames of a clip as the pipeline sizes one (a multiple of the VAE's factor)."""
    pipe = decoder.pipe
    hop = int(np.prod(pipe.vocoder.config.upsample_rates))
    frames = int(seconds * decoder.sample_rate / hop)
    return int(math.ceil(frames / pipe.vae_scale_factor) * pipe.vae_scale_factor)


@torch.no_grad()
def audioldm2_latents(decoder, wave: np.ndarray, seconds: float) -> tuple[torch.Tensor, int]:
    """A waveform at 16 kHz → (the VAE's latent distribution parameters (2C, T', F') of a
    clip of `seconds`, the number of latent frames of real audio)."""
    pipe = decoder.pipe
    hop = int(np.prod(pipe.vocoder.config.upsample_rates))
    frames = audioldm2_frames(decoder, seconds)
    real = min(len(wave), frames * hop)
    clip = np.zeros(max(real, MEL_FFT), dtype=np.float32)
    clip[:real] = wave[:real]
    # AudioLDM's own front end (the one edits use): peak 0.5, log-mel; silence after the clip
    mel = log_mel(clip, decoder.sample_rate, int(pipe.vocoder.config.model_in_dim), hop)
    mel = mel[:min(frames, max(1, real // hop))]
    valid = mel.shape[0]
    mel = np.pad(mel, ((0, frames - valid), (0, 0)), constant_values=np.log(MEL_FLOOR))
    x = torch.from_numpy(mel)[None, None].to(pipe.vae.device, pipe.vae.dtype)
    params = pipe.vae.encode(x).latent_dist.parameters[0]  # (1, frames, mels) in
    return params.float().cpu(), int(math.ceil(valid / pipe.vae_scale_factor))


def diffusion_inputs(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy latents, the UNet's regression target) for the scheduler's training noise."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return noisy, scheduler.get_velocity(latents, noise, timesteps)
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"prediction_type {scheduler.config.prediction_type!r} is not trained "
                         "here (epsilon or v_prediction)")
    return noisy, noise


class AudioLDM2Objective(nn.Module):
    """Noise-prediction MSE of AudioLDM2's UNet (encoders, VAE, vocoder frozen)."""

    kind = "audioldm2"

    def __init__(self, decoder, cond_dropout: float) -> None:
        super().__init__()
        self.unet = decoder.pipe.unet
        self.pipe = decoder.pipe  # a pipeline is no nn.Module: its frozen parts stay out
        self.scheduler = DDPMScheduler.from_config(decoder.schedule)
        self.scaling = float(decoder.pipe.vae.config.scaling_factor)
        self.cond_dropout = cond_dropout
        self._conditioning: OrderedDict[str, tuple] = OrderedDict()

    def fsdp_groups(self) -> tuple[list[nn.Module], set[nn.Parameter]]:
        """strategy=fsdp: each down / mid / up block, then the whole UNet (renders call it
        directly); the pipeline's encoders are no part of this module."""
        unet = self.unet
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks, unet], set()

    @torch.no_grad()
    def prepare(self, batch: dict, gens: list[torch.Generator]) -> dict:
        device = self.unet.device
        drop = dropped(gens, self.cond_dropout)
        texts = ["" if d else c for d, c in zip(drop.tolist(), batch["captions"], strict=True)]
        embeds, attn, generated = self._encode(texts, device)
        params = batch["latents"]  # (B, 2C, T', F')
        latents, noise, steps = [], [], []
        n_train = int(self.scheduler.config.num_train_timesteps)
        for i, g in enumerate(gens):
            dist = DiagonalGaussianDistribution(params[i:i + 1])
            latents.append(dist.sample(generator=g) * self.scaling)
            noise.append(torch.randn(latents[-1].shape, generator=g))
            steps.append(torch.randint(0, n_train, (1,), generator=g))
        latents, noise, t = torch.cat(latents), torch.cat(noise), torch.cat(steps)
        noisy, target = diffusion_inputs(self.scheduler, latents, noise, t)
        frames = torch.arange(latents.shape[2])[None, :] < batch["valid"][:, None]  # (B, T')
        mask = frames[:, None, :, None].expand_as(latents)
        dtype = self.unet.dtype
        return {"noisy": noisy.to(device, dtype), "t": t.to(device),
                "target": target.to(device), "mask": mask.to(device),
                "embeds": embeds.to(dtype), "attn": attn, "generated": generated.to(dtype),
                "count": int(mask.sum()), "dropped": int(drop.sum())}

    def _encode(self, texts: list[str], device: torch.device):
        """The pipeline's conditioning of each caption alone (T5 states (B, L, W) padded to
        the longest with their mask (B, L), GPT-2 states (B, 8, W')): encoded in a batch,
        GPT-2's generated states would depend on the other captions' padding."""
        parts = [self._encode_one(t, device) for t in texts]
        length = max(e.shape[1] for e, _, _ in parts)
        embeds = torch.cat([F.pad(e, (0, 0, 0, length - e.shape[1])) for e, _, _ in parts])
        attn = torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m, _ in parts])
        return embeds, attn, torch.cat([g for _, _, g in parts])

    def _encode_one(self, text: str, device: torch.device):
        """One caption's conditioning, remembered (the encoders are frozen and GPT-2's eight
        generated states cost eight forwards): the last CONDITIONING_CACHE captions."""
        hit = self._conditioning.get(text)
        if hit is None:
            hit = tuple(t.cpu() for t in self.pipe.encode_prompt(
                [text], device, num_waveforms_per_prompt=1, do_classifier_free_guidance=False))
            self._conditioning[text] = hit
            if len(self._conditioning) > CONDITIONING_CACHE:
                self._conditioning.popitem(last=False)
        else:
            self._conditioning.move_to_end(text)
        return tuple(t.to(device) for t in hit)

    def forward(self, noisy, t, target, mask, embeds, attn, generated) -> torch.Tensor:
        """Summed squared error over the clip's latent elements (normalised by the caller)."""
        pred = self.unet(noisy, t, encoder_hidden_states=generated,
                         encoder_hidden_states_1=embeds, encoder_attention_mask_1=attn,
                         return_dict=False)[0]
        return ((pred.float() - target.float()) ** 2)[mask].sum()
