"""Memory of `m2ugen train-decoder` at full size, counted from parameters (no GPU needed).

Builds MusicGen small / medium / large and AudioLDM2-music's layout on `meta` (the shapes
of benchmarks/gpu_suite.py; large: 48 layers × 2048), makes each trainable exactly as
train-decoder does (`decoders.tuning.prepare`: LoRA on the default targets, or the whole
tuned module) and prints, per GPU under DDP with bf16 autocast:

    frozen weights bf16 (2 B each) + trained tensors fp32 master, gradient, Adam m and v
    (16 B each) = the floor, before activations (not estimated here: they grow with
    batch × clip length; MusicGen: 50 frames/s × 4 codebooks; AudioLDM2: 10 s → a
    256 × 16 latent)

and the size of the saved `decoder.safetensors` (fp32).

    python benchmarks/bench_decoder_finetune.py [--rank 8]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers import MusicgenForConditionalGeneration

from m2ugen.model import M2UGen
from m2ugen.modules.decoders.musicgen import MusicGenDecoder
from m2ugen.modules.decoders.tuning import Tuning, prepare, tuned_module
from m2ugen.presets import tiny_dir
from m2ugen.presets.tiny import ensure_tiny

GiB = 2 ** 30


def _suite():
    path = Path(__file__).resolve().parent / "gpu_suite.py"
    spec = importlib.util.spec_from_file_location("gpu_suite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decoders():
    """(name, decoder wrapper on meta) at full size."""
    suite = _suite()
    cfgs = suite.full_configs()
    tiny_aldm = ensure_tiny(tiny_dir("audioldm2"), decoder="audioldm2", model_cls=M2UGen)
    meta, bf16 = torch.device("meta"), torch.bfloat16
    large = type(cfgs["musicgen-small"]).from_dict(cfgs["musicgen-small"].to_dict())
    large.decoder.update({"num_hidden_layers": 48, "hidden_size": 2048, "ffn_dim": 8192,
                          "num_attention_heads": 32})
    for name, cfg in (("musicgen-small", cfgs["musicgen-small"]),
                      ("musicgen-medium", cfgs["musicgen-medium"]),
                      ("musicgen-large", large)):
        with suite.on(meta, bf16):
            model = MusicgenForConditionalGeneration(cfg)
        yield name, MusicGenDecoder(model, processor=None)
    yield "audioldm2-music", suite.build_audioldm2("full", tiny_aldm, meta, bf16)


def count(decoder, tuning: Tuning) -> dict[str, float]:
    from m2ugen.loading import decoder_parameters

    total = sum(p.numel() for _, p in decoder_parameters(decoder))
    module = tuned_module(decoder)
    tuned = sum(p.numel() for p in module.parameters())
    trained = sum(p.numel() for p in prepare(module, tuning, decoder.kind).values())
    frozen = sum(p.numel() for _, p in decoder_parameters(decoder)) - trained
    return {"total": total, "tuned": tuned, "trained": trained,
            "floor_gib": (2 * frozen + 16 * trained) / GiB, "file_mib": 4 * trained / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    print("| decoder | parameters (tuned module) | tuning | trained | GPU floor (DDP, bf16) "
          "| decoder.safetensors |")
    print("|---|---|---|---|---|---|")
    for mode in ("lora", "full"):
        for name, decoder in decoders():
            c = count(decoder, Tuning(mode=mode, rank=args.rank, alpha=args.rank))
            what = f"LoRA r={args.rank}" if mode == "lora" else "full"
            print(f"| {name} | {c['total'] / 1e6:,.0f} M ({c['tuned'] / 1e6:,.0f} M) | {what} "
                  f"| {c['trained'] / 1e6:,.2f} M | {c['floor_gib']:.1f} GiB "
                  f"| {c['file_mib']:,.1f} MiB |")


if __name__ == "__main__":
    main()
