"""Training memory: the planner's table, and the planner against a GPU.

    python benchmarks/bench_train_memory.py --plan            # README's table (no weights)
    python benchmarks/bench_train_memory.py --measure DIR     # on a CUDA GPU (issue 16 §6)
    python benchmarks/bench_train_memory.py --measure DIR --tiny --steps 2   # the script on CPU

--plan: for each stage at full size (musicgen-small: LLaMA-2-7B and the published
encoders, architectures only), GPUs × card → the shipped settings if they fit, else the
planner's suggestion (`m2ugen train --dry-run` for every cell). Estimated, not measured.

--measure: builds DIR once (benchmarks/bench_chat_7b_cpu.py's 7B-shaped random LLaMA —
4096 wide, 32 layers, FFN 11008 — around the tiny encoders; vocabulary the tiny one's),
synthetic data, then stage 1 for a few steps per setting (fp16 and bf16; DDP, and FSDP
when more than one GPU is visible, launched with torchrun by this script), and prints per
setting the peak of torch.cuda.max_memory_allocated, the step time (after the first step)
and the dry-run estimate for the same config beside it, as one JSON line each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

GPU_COUNTS = (1, 2, 4, 8)
CARDS = (16, 24, 32, 40, 80)  # GB: V100-16, RTX 3090/4090, V100-32, A100-40, A100/H100-80


def plan_table() -> str:
    from m2ugen.training.config import load_train_config
    from m2ugen.training.memory import GiB, architecture, estimate, suggest

    root = Path(__file__).resolve().parents[1]
    lines = []
    for stage in (1, 2, 3):
        cfg = load_train_config(root / "configs" / f"stage{stage}.yaml",
                                ["model=musicgen-small", "data=none.yaml"])
        arch = architecture(cfg, music=stage != 1)
        lines += [f"stage {stage} (batch {cfg.batch_size} × max_len {cfg.max_len}, "
                  f"{arch.trainable / 1e6:.0f} M trainable; shipped settings: "
                  f"{estimate(arch, cfg, 1).total / GiB:.1f} GiB on one GPU)", "",
                  "| GPUs | " + " | ".join(f"{c} GB" for c in CARDS) + " |",
                  "|---:|" + "---|" * len(CARDS)]
        for gpus in GPU_COUNTS:
            cells = []
            for card in CARDS:
                if estimate(arch, cfg, gpus, card * GiB).fits:
                    cells.append("as shipped")
                    continue
                better = suggest(arch, cfg, gpus, card * GiB)
                cells.append("—" if better is None else ", ".join(
                    _short(k, v) for k, v in dataclasses.asdict(better).items()
                    if k in ("gradient_checkpointing", "optimizer", "strategy", "cpu_offload",
                             "batch_size") and v != getattr(cfg, k)))
            lines.append(f"| {gpus} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _short(key: str, value) -> str:
    return {"gradient_checkpointing": "ckpt", "optimizer": "8-bit Adam",
            "strategy": "FSDP", "cpu_offload": "offload"}.get(key, f"{key} {value}")


def measure(model_dir: Path, steps: int, tiny: bool) -> None:
    from m2ugen.data.synth import write_synthetic_dataset
    from m2ugen.model import M2UGen
    from m2ugen.presets import tiny_dir
    from m2ugen.presets.tiny import ensure_tiny

    tiny_path = ensure_tiny(tiny_dir("musicgen"), model_cls=M2UGen)
    if tiny:
        model_dir = tiny_path
    elif not model_dir.is_dir():
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_chat_7b_cpu import build

        t = time.perf_counter()
        build(model_dir, tiny_path)
        print(f"built {model_dir} in {time.perf_counter() - t:.0f} s", flush=True)
    data = model_dir.parent / f"{model_dir.name}-synth"
    spec = data / "dataset.yaml"
    if not spec.is_file():
        write_synthetic_dataset(data, seed=0, n_audio=16, n_images=16, n_videos=8)
    gpus = torch.cuda.device_count()
    settings = [dict(precision=p, strategy="ddp") for p in ("fp16", "bf16")]
    if gpus > 1:
        settings += [dict(precision=p, strategy="fsdp") for p in ("fp16", "bf16")]
    if not torch.cuda.is_available():
        settings = [dict(precision="fp32", strategy="ddp")]
    for s in settings:
        nproc = gpus if s["strategy"] == "fsdp" else 1
        cmd = [sys.executable, __file__, "--one", str(model_dir), "--data", str(spec),
               "--steps", str(steps), "--precision", s["precision"], "--strategy",
               s["strategy"]]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(nproc), *cmd[1:]]
        code = os.spawnv(os.P_WAIT, cmd[0], cmd)  # the child prints its JSON line
        if code:
            print(json.dumps({**s, "gpus": nproc, "error": f"exit {code}"}), flush=True)


def one(model_dir: Path, spec: Path, steps: int, precision: str, strategy: str) -> None:
    """One setting in this process (or one rank of it): train, then print the numbers."""
    from m2ugen.training.config import TrainConfig
    from m2ugen.training.loop import train
    from m2ugen.training.memory import GiB, architecture, estimate

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = model_dir.parent / f"{model_dir.name}-run-{precision}-{strategy}-{world}"
    if rank == 0 and out.exists():
        import shutil

        shutil.rmtree(out)
    cfg = TrainConfig(stage=1, model=str(model_dir), init_trained="standard", data=str(spec),
                      out=str(out), max_steps=steps, batch_size=4, max_len=256,
                      warmup_steps=1, save_every=10_000, precision=precision,
                      strategy=strategy, progress=False, tensorboard=False)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    train(cfg)
    total = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if rank != 0:
        return
    arch = architecture(cfg, music=False)
    plan = estimate(arch, cfg, world, gpu=cuda)
    print(json.dumps({
        "precision": precision, "strategy": strategy, "gpus": world,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GiB, 2) if cuda
        else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 2) if cuda
        else None,
        "estimate_gib": round(plan.total / GiB, 2),
        "estimate_parts_gib": {k: round(v / GiB, 2) for k, v in plan.parts.items()},
        "step_s_after_first": round(sum(cfg.batch_size * world / r["samples_per_s"]
                                        for r in rows[1:]) / (len(rows) - 1), 3)
        if len(rows) > 1 else None,
        "wall_s_with_load": round(total, 1),
        "skipped_steps": rows[-1].get("skipped_steps"),
        "losses": [round(r["loss"], 4) for r in rows],
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", action="store_true")
    ap.add_argument("--measure", type=Path, metavar="DIR")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="bf16", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="the tiny model (checks the script)")
    args = ap.parse_args()
    if args.one:
        one(args.one, args.data, args.steps, args.precision, args.strategy)
    elif args.measure:
        measure(args.measure, args.steps, args.tiny)
    else:
        print(plan_table())


if __name__ == "__main__":
    main()
