"""Per-step training time with and without the feature cache (tiny preset, synthetic data).

    python benchmarks/bench_train.py [--stage 1] [--steps 20]

Without a cache every step decodes the media files and runs the frozen encoders (and, in
stages 2–3, the decoder's text encoders for the targets); with `m2ugen cache-features`
those tensors are read from safetensors shards. Prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from m2ugen.data.cache import cache_features
from m2ugen.data.synth import write_synthetic_dataset
from m2ugen.train import train
from m2ugen.train_config import TrainConfig


def step_time(cfg: TrainConfig) -> float:
    """Median seconds per optimizer step (from the metrics log's samples/s)."""
    out = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = sorted(cfg.batch_size * cfg.grad_accum / r["samples_per_s"] for r in rows[2:])
    return per_step[len(per_step) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", default="tiny")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = write_synthetic_dataset(root / "data")
        common = dict(stage=args.stage, model=args.model, data=str(spec), max_steps=args.steps,
                      batch_size=4, warmup_steps=2, save_every=10_000, progress=False,
                      tensorboard=False, init_trained="standard")
        live = step_time(TrainConfig(out=str(root / "live"), **common))
        cache_cfg = TrainConfig(out=str(root / "cached"), feature_cache=str(root / "cache"),
                                **common)
        start = time.perf_counter()
        cache_features(cache_cfg)
        build = time.perf_counter() - start
        cached = step_time(cache_cfg)
    print(f"stage {args.stage}, {args.model}, batch 4: {live * 1000:.0f} ms/step live, "
          f"{cached * 1000:.0f} ms/step with the feature cache "
          f"(built once in {build:.1f} s): {live / cached:.1f}x faster per step")


if __name__ == "__main__":
    main()
