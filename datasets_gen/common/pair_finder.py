"""MUEdit pair finder: cosine k-NN over clip embeddings with faiss, then a compatibility
filter (tempo/key) and a seeded choice of the target number of pairs.

The published script sampled pairs at random with a broken distance (ORIGINAL_M2UGEN.md
§5.6); here a pair is two clips that are each other's close neighbours in the encoder's
space and musically compatible, so "edit A into B" is a plausible instruction.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from datasets_gen.common.music_stats import MusicStats, compatible


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, C-contiguous, as faiss wants)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is all zeros; its cosine similarity is undefined")
    return np.ascontiguousarray(x / norms)


def nearest_neighbours(embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN of every row among the others: (similarities, indices), each (N, k'),
    k' = min(k, N-1), best first; a row is never its own neighbour."""
    import faiss  # lazily: only this step needs it

    x = normalise(embeddings)
    n, dim = x.shape
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    index = faiss.IndexFlatIP(dim)  # inner product of unit vectors = cosine similarity
    index.add(x)
    sims, idx = index.search(x, k + 1)
    out_s = np.empty((n, k), np.float32)
    out_i = np.empty((n, k), np.int64)
    for row in range(n):
        # drop self (it may not come first when another row is an exact duplicate)
        keep = [j for j in range(k + 1) if idx[row, j] != row][:k]
        out_s[row], out_i[row] = sims[row, keep], idx[row, keep]
    return out_s, out_i


@dataclass(frozen=True)
class Pair:
    source: str  # key of the input clip
    target: str  # key of the edited (output) clip
    similarity: float


def find_pairs(keys: Sequence[str], embeddings: np.ndarray, stats: Sequence[MusicStats],
               num_pairs: int, k: int = 10, seed: int = 0, max_per_clip: int = 2,
               tempo_tolerance: float = 0.08, max_key_distance: int = 1,
               min_similarity: float = -1.0) -> list[Pair]:
    """Up to `num_pairs` compatible neighbour pairs, most similar first.

    Each unordered pair appears once; a clip takes part in at most `max_per_clip` pairs (so
    a few hub clips do not dominate). The seed breaks similarity ties and picks which side
    is the input, so the same inputs and seed always give the same pairs.
    """
    if len(keys) != len(embeddings) or len(keys) != len(stats):
        raise ValueError("keys, embeddings and stats must have the same length")
    rng = random.Random(seed)
    sims, idx = nearest_neighbours(embeddings, k)
    candidates: dict[tuple[int, int], float] = {}
    for i in range(len(keys)):
        for s, j in zip(sims[i], idx[i], strict=True):
            a, b = (i, int(j)) if i < j else (int(j), i)
            if s >= min_similarity and compatible(stats[a], stats[b], tempo_tolerance,
                                                  max_key_distance):
                candidates[(a, b)] = float(s)
    tiebreak = {pair: rng.random() for pair in sorted(candidates)}
    order = sorted(candidates, key=lambda p: (-round(candidates[p], 6), tiebreak[p]))
    used: dict[int, int] = {}
    pairs = []
    for a, b in order:
        if len(pairs) >= num_pairs:
            break
        if used.get(a, 0) >= max_per_clip or used.get(b, 0) >= max_per_clip:
            continue
        used[a] = used.get(a, 0) + 1
        used[b] = used.get(b, 0) + 1
        src, dst = (a, b) if rng.random() < 0.5 else (b, a)
        pairs.append(Pair(keys[src], keys[dst], round(candidates[(a, b)], 6)))
    return pairs
