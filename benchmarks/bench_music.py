"""Real-time factor (audio seconds per compute second) of the music decoders.

    python benchmarks/bench_music.py                       # tiny presets, CPU
    python benchmarks/bench_music.py --full musicgen-small # full-size shapes, random weights
    python benchmarks/bench_music.py --samplers            # AudioLDM2: DDIM-200 vs DPM-Solver++-20

The tiny presets measure the code path (conditioning, CFG, decoding), not a real model's
speed. `--full` builds MusicGen at the published sizes from configs with random weights
(no download) and times it on the GPU when there is one (bf16/fp16), else on the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from m2ugen.model import M2UGen

# musicgen-small / -medium: decoder (hidden, layers, heads), T5-base text encoder, EnCodec 32 kHz
FULL_SIZES = {"musicgen-small": (1024, 24, 16), "musicgen-medium": (1536, 48, 24)}


def rtf(decoder, cond, seconds: float, steps: int | None, repeats: int = 2,
        scheduler: str | None = None) -> float:
    decoder.generate(cond, seconds=min(seconds, 1.0), guidance=3.0, seed=0, steps=steps,
                     scheduler=scheduler)
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        decoder.generate(cond, seconds=seconds, guidance=3.0, seed=r, steps=steps,
                         scheduler=scheduler)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return seconds / best


def tiny(seconds: float, steps: int) -> None:
    for preset in ("tiny", "tiny-audioldm2"):
        model = M2UGen.from_pretrained(preset)
        dec = model.decoder
        cond = torch.randn(1, *dec.cond_shape)
        print(f"{preset:15s} {dec.kind:9s} CPU fp32: RTF {rtf(dec, cond, seconds, steps):6.1f}x "
              f"real time ({seconds:g} s of audio, {steps} diffusion steps for AudioLDM2)")


def samplers(seconds: float) -> None:
    """The tiny AudioLDM2's default sampler against the published one, in one run."""
    dec = M2UGen.from_pretrained("tiny-audioldm2").decoder
    cond = torch.randn(1, *dec.cond_shape)
    fast = rtf(dec, cond, seconds, None, scheduler="dpm++")  # 20 steps
    published = rtf(dec, cond, seconds, None, scheduler="ddim")  # 200 steps
    print(f"tiny-audioldm2 CPU fp32, {seconds:g} s of audio: DPM-Solver++ 20 steps RTF "
          f"{fast:.2f}x, DDIM 200 steps RTF {published:.2f}x: {fast / published:.1f}x faster")


def full(name: str, seconds: float) -> None:
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    from m2ugen.modules.decoders.musicgen import MusicGenDecoder

    hidden, layers, heads = FULL_SIZES[name]
    config = MusicgenConfig(
        text_encoder=T5Config(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                              vocab_size=32128).to_dict(),
        audio_encoder=EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4],
                                    codebook_size=2048, target_bandwidths=[2.2],
                                    num_filters=64, hidden_size=128).to_dict(),
        decoder=MusicgenDecoderConfig(hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, ffn_dim=4 * hidden,
                                      vocab_size=2048, num_codebooks=4, pad_token_id=2048,
                                      bos_token_id=2048).to_dict())
    config.decoder_start_token_id = config.pad_token_id = 2048
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
        if device.type == "cuda" else torch.float32
    model = MusicgenForConditionalGeneration(config).to(device, dtype).eval()
    model.generation_config.decoder_start_token_id = 2048
    model.generation_config.pad_token_id = 2048
    model.generation_config.bos_token_id = 2048
    dec = MusicGenDecoder(model, processor=None)
    cond = torch.randn(1, *dec.cond_shape, device=device, dtype=dtype)
    label = f"{device.type} {str(dtype).removeprefix('torch.')}"
    print(f"{name} (random weights) {label}: RTF {rtf(dec, cond, seconds, 0, 1):6.2f}x "
          f"real time ({seconds:g} s of audio)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=20, help="AudioLDM2 denoising steps")
    ap.add_argument("--full", choices=sorted(FULL_SIZES), help="time a full-size MusicGen")
    ap.add_argument("--samplers", action="store_true",
                    help="AudioLDM2's default DPM-Solver++ (20 steps) vs the published DDIM (200)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.samplers:
        samplers(args.seconds)
    elif args.full:
        full(args.full, args.seconds)
    else:
        tiny(args.seconds, args.steps)


if __name__ == "__main__":
    main()
