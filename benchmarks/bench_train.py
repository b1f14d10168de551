"""Per-step training time with and without the feature cache (tiny preset, synthetic data).

    python benchmarks/bench_train.py [--stage 1] [--steps 20] [--full-encoders]

Without a cache every step decodes the media files and runs the frozen encoders (and, in
stages 2–3, the decoder's text encoders for the targets); with `m2ugen cache-features`
those tensors are read from safetensors shards. Prints both times and their ratio.
`--full-encoders` swaps the tiny encoders for MERT-330M, ViT-B/16 and ViViT-B/16x2 at
their published sizes (random weights, built from configs): the realistic case.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from m2ugen.data.synth import write_synthetic_dataset
from m2ugen.training.config import TrainConfig
from m2ugen.training.features import cache_features
from m2ugen.training.loop import train


def step_time(cfg: TrainConfig) -> float:
    """Median seconds per optimizer step (from the metrics log's samples/s)."""
    out = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = sorted(cfg.batch_size * cfg.grad_accum / r["samples_per_s"] for r in rows[2:])
    return per_step[len(per_step) // 2]


def with_full_encoders(root: Path) -> str:
    """The tiny preset with full-size random MERT / ViT / ViViT (published shapes)."""
    from transformers import (
        HubertConfig,
        HubertModel,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
        VivitConfig,
        VivitImageProcessor,
        VivitModel,
        Wav2Vec2FeatureExtractor,
    )

    from m2ugen.config import M2UGenConfig
    from m2ugen.model import M2UGen
    from m2ugen.presets.tiny import build_tiny

    out = build_tiny(root / "full-encoders", model_cls=M2UGen)
    HubertModel(HubertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                             intermediate_size=4096, feat_extract_norm="layer",
                             conv_bias=True)).save_pretrained(out / "mert")
    Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=True).save_pretrained(out / "mert")
    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(out / "vit")
    ViTImageProcessorPil().save_pretrained(out / "vit")
    VivitModel(VivitConfig(), add_pooling_layer=False).save_pretrained(out / "vivit")
    VivitImageProcessor().save_pretrained(out / "vivit")
    cfg = M2UGenConfig.load(out)
    cfg.mert_layers, cfg.mert_dim = 25, 1024
    cfg.vit_tokens, cfg.vit_dim, cfg.vivit_tokens, cfg.vivit_dim = 197, 768, 3137, 768
    cfg.video_frames = 32
    cfg.save(out)
    (out / "adapter.safetensors").unlink()  # adapter shapes changed: start untrained
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--full-encoders", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = write_synthetic_dataset(root / "data")
        model = with_full_encoders(root) if args.full_encoders else args.model
        common = dict(stage=args.stage, model=model, data=str(spec), max_steps=args.steps,
                      batch_size=4, warmup_steps=2, save_every=10_000, progress=False,
                      tensorboard=False, init_trained="standard")
        live = step_time(TrainConfig(out=str(root / "live"), **common))
        cache_cfg = TrainConfig(out=str(root / "cached"), feature_cache=str(root / "cache"),
                                **common)
        start = time.perf_counter()
        cache_features(cache_cfg)
        build = time.perf_counter() - start
        cached = step_time(cache_cfg)
    what = "tiny LLM + full-size encoders" if args.full_encoders else args.model
    print(f"stage {args.stage}, {what}, batch 4: {live * 1000:.0f} ms/step live, "
          f"{cached * 1000:.0f} ms/step with the feature cache "
          f"(built once in {build:.1f} s): {live / cached:.1f}x faster per step")


if __name__ == "__main__":
    main()
