"""MUEdit step 02: embed every clip, estimate tempo and key, then pick similar pairs.

    python -m datasets_gen.MUEdit.02_pairs --out WORK --encoder m-a-p/MERT-v1-330M \
        --num-pairs 5000 --seed 0

Per clip (resumable, sharded): the encoder embedding, BPM and key. At the merge (automatic
when unsharded, `--merge` after sharded runs) all embeddings go into a faiss cosine k-NN
index; neighbour pairs with compatible tempo and key are chosen, most similar first,
seeded → `pairs.json` ([{"key", "source", "target", "similarity"}]).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datasets_gen.common.embed import MusicEmbedder
from datasets_gen.common.music_stats import MusicStats, analyse
from datasets_gen.common.pair_finder import find_pairs
from datasets_gen.common.records import Record, done_records, write_json
from datasets_gen.common.runner import Item, Outcome, Processor, Step, main, resolve_device
from datasets_gen.common.trust import add_trust_flag
from datasets_gen.MUEdit.pairs_file import PAIRS
from m2ugen.media import load_audio


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="m-a-p/MERT-v1-330M",
                   help="m2ugen model dir/preset (its MERT) or a MERT hub id/dir")
    p.add_argument("--layer", type=int, default=None,
                   help="use this encoder layer (default: the mean of all layers)")
    p.add_argument("--clip-seconds", type=float, default=30.0)
    p.add_argument("--num-pairs", type=int, default=1000, help="target number of pairs")
    p.add_argument("--k", type=int, default=10, help="neighbours searched per clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-per-clip", type=int, default=2)
    p.add_argument("--tempo-tolerance", type=float, default=0.08, help="relative BPM difference")
    p.add_argument("--max-key-distance", type=int, default=1, help="circle-of-fifths steps")
    p.add_argument("--min-similarity", type=float, default=-1.0)
    add_trust_flag(p)


def _items(args: argparse.Namespace) -> list[Item]:
    return [Item(k, {"path": r["path"]})
            for k, r in done_records(args.out, "01_collect", "02_pairs").items()]


def _processor(args: argparse.Namespace) -> Processor:
    embedder = MusicEmbedder(args.encoder, resolve_device(args.device), args.layer,
                             args.clip_seconds, trust_remote_code=args.trust_remote_code)
    sr = embedder.sample_rate

    def process(batch: list[Item]) -> list[Outcome]:
        out: list[Outcome] = []
        wavs, where = [], []
        for it in batch:
            try:
                wavs.append(load_audio(it.data["path"], sr)[: int(args.clip_seconds * sr)])
                where.append(len(out))
                out.append({})
            except Exception as e:  # noqa: BLE001 - returned: recorded as this item's failure
                out.append(e)
        if wavs:
            emb = embedder(wavs)
            for i, wav, e in zip(where, wavs, emb, strict=True):
                stats = analyse(wav, sr)
                out[i] = {"path": batch[i].data["path"], "bpm": stats.bpm, "music_key": stats.key,
                          "embedding": [round(float(x), 6) for x in e]}
        return out
    return process


def _finalize(args: argparse.Namespace, records: dict[str, Record]) -> list[Path]:
    done = {k: r for k, r in sorted(records.items()) if "error" not in r and "skipped" not in r}
    keys = list(done)
    pairs = []
    if len(keys) >= 2:
        emb = np.array([done[k]["embedding"] for k in keys], dtype=np.float32)
        stats = [MusicStats(done[k]["bpm"], done[k]["music_key"]) for k in keys]
        pairs = find_pairs(keys, emb, stats, args.num_pairs, args.k, args.seed,
                           args.max_per_clip, args.tempo_tolerance, args.max_key_distance,
                           args.min_similarity)
    if len(pairs) < args.num_pairs:
        print(f"02_pairs: found {len(pairs)} compatible pairs of the {args.num_pairs} wanted "
              "(more clips, a larger --k or looser --tempo-tolerance/--max-key-distance "
              "give more)")
    path = args.out / PAIRS
    write_json(path, [{"key": f"{p.source}|{p.target}", "source": p.source, "target": p.target,
                       "similarity": p.similarity} for p in pairs])
    return [path]


STEP = Step("02_pairs", "Find pairs of similar, compatible music (faiss cosine k-NN).",
            _items, _processor, _args, _finalize, batch_size=8)


def run(argv: Sequence[str] | None = None) -> int:
    return main(STEP, argv)


if __name__ == "__main__":
    sys.exit(run())
