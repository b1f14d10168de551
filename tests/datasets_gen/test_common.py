"""datasets_gen.common: the step runner (resume, shards, failures), tempo/key, pair finder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # datasets_gen lives beside the m2ugen package, not inside it
    sys.path.insert(0, str(ROOT))

from datasets_gen.common import music_stats as ms  # noqa: E402
from datasets_gen.common.pair_finder import find_pairs, nearest_neighbours  # noqa: E402
from datasets_gen.common.records import read_records  # noqa: E402
from datasets_gen.common.runner import Item, Skip, Step, main, shard_of  # noqa: E402

KEYS = [f"item{i:02d}" for i in range(20)]


def toy_step(calls: list[list[str]], crash_on_batch: int | None = None) -> Step:
    """Squares numbers; 'item07' is bad input (fails), multiples of 5 are skipped."""
    def processor(args):
        def process(batch: list[Item]):
            calls.append([it.key for it in batch])
            if crash_on_batch is not None and len(calls) == crash_on_batch:
                raise KeyboardInterrupt  # the machine goes away mid-step
            if any(it.key == "item07" for it in batch):
                raise ValueError("item07 is corrupt")  # the whole batch raises
            return [Skip("multiple of 5") if it.data["n"] % 5 == 0 else {"sq": it.data["n"] ** 2}
                    for it in batch]
        return process

    def items(args):
        return [Item(k, {"n": int(k[4:])}) for k in reversed(KEYS)]

    return Step("01_toy", "toy", items, processor, batch_size=3)


def final(out: Path) -> dict:
    return json.loads((out / "01_toy.json").read_text())


def test_run_records_done_skipped_and_failed_with_reasons(tmp_path, capsys):
    calls: list[list[str]] = []
    assert main(toy_step(calls), ["--out", str(tmp_path)]) == 0
    recs = final(tmp_path)
    assert sorted(recs) == KEYS
    assert recs["item03"] == {"key": "item03", "sq": 9}
    assert recs["item05"]["skipped"] == "multiple of 5"
    assert recs["item07"]["error"] == "ValueError: item07 is corrupt"
    # its batch-mates were retried one by one and succeeded
    assert recs["item06"]["sq"] == 36 and recs["item08"]["sq"] == 64
    out = capsys.readouterr().out
    assert "01_toy: 15 done, 4 skipped (multiple of 5 ×4), 1 failed (ValueError: item07" in out
    # rerun: everything done is skipped, the failure is retried (and recorded again)
    calls.clear()
    assert main(toy_step(calls), ["--out", str(tmp_path)]) == 1  # every attempted item failed
    assert calls == [["item07"]]
    assert "0 done, 19 skipped (already done ×15; already skipped ×4), 1 failed" in \
        capsys.readouterr().out
    calls.clear()
    main(toy_step(calls), ["--out", str(tmp_path), "--skip-failed"])
    assert calls == []


def test_interrupted_run_resumes_without_duplicates_or_gaps(tmp_path):
    reference = tmp_path / "ref"
    main(toy_step([]), ["--out", str(reference)])
    out = tmp_path / "run"
    calls: list[list[str]] = []
    with pytest.raises(KeyboardInterrupt):
        main(toy_step(calls, crash_on_batch=3), ["--out", str(out)])
    lines = (out / "01_toy.jsonl").read_text().splitlines()
    assert len(lines) == 6  # two batches were committed before the crash
    with open(out / "01_toy.jsonl", "a") as f:
        f.write('{"key": "item1')  # and a torn line, as a crash inside write() leaves
    calls.clear()
    assert main(toy_step(calls), ["--out", str(out)]) == 0
    assert all(k not in {json.loads(x)["key"] for x in lines} for c in calls for k in c)
    keys = [json.loads(x)["key"] for x in (out / "01_toy.jsonl").read_text().splitlines()]
    assert sorted(keys) == KEYS  # each key exactly once, the torn line gone
    assert final(out) == final(reference)


def test_sharded_runs_merged_equal_one_run(tmp_path):
    main(toy_step([]), ["--out", str(tmp_path / "one"), "--limit", "17"])
    sharded = tmp_path / "sharded"
    seen: list[list[str]] = []
    for shard in range(3):
        assert main(toy_step(seen), ["--out", str(sharded), "--limit", "17", "--shard",
                                     str(shard), "--num-shards", "3"]) == 0
    assert not (sharded / "01_toy.json").exists()
    assert len(list(sharded.glob("01_toy.shard-*-of-3.jsonl"))) == 3
    assert main(toy_step([]), ["--out", str(sharded), "--merge"]) == 0
    assert final(sharded) == final(tmp_path / "one")
    assert sorted(final(sharded)) == KEYS[:17]
    assert {shard_of(k, 3) for k in KEYS} == {0, 1, 2}


def test_bad_shard_arguments_are_a_one_line_error(tmp_path, capsys):
    assert main(toy_step([]), ["--out", str(tmp_path), "--shard", "3", "--num-shards", "3"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --shard 3 --num-shards 3")


def test_records_prefer_success_over_failure(tmp_path):
    (tmp_path / "s.shard-0-of-2.jsonl").write_text('{"key": "a", "x": 1}\n')
    (tmp_path / "s.shard-1-of-2.jsonl").write_text('{"key": "a", "error": "E: late"}\n')
    assert read_records(tmp_path, "s") == {"a": {"key": "a", "x": 1}}


@pytest.mark.parametrize("bpm,key", [(72, "A minor"), (118, "C major"), (150, "F# major"),
                                     (96, "D minor")])
def test_tempo_and_key_of_synthetic_clips(bpm, key):
    wav = ms.synth_clip(bpm, key, 3.0, 22050, seed=bpm)
    stats = ms.analyse(wav, 22050)
    assert abs(stats.bpm - bpm) / bpm < 0.03
    assert stats.key == key


def test_key_distance_and_compatibility():
    assert ms.key_distance("C major", "A minor") == 0  # relative keys
    assert ms.key_distance("C major", "G major") == 1
    assert ms.key_distance("C major", "F# major") == 6
    a = ms.MusicStats(120.0, "C major")
    assert ms.compatible(a, ms.MusicStats(124.0, "E minor"))
    assert not ms.compatible(a, ms.MusicStats(140.0, "C major"))
    assert not ms.compatible(a, ms.MusicStats(120.0, "D# major"))


def clustered(seed: int = 0, clusters: int = 4, per: int = 5, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)) * 5
    return np.concatenate([c + rng.standard_normal((per, dim)) * 0.3 for c in centers])


def test_nearest_neighbours_are_the_true_ones():
    x = clustered()
    sims, idx = nearest_neighbours(x, k=4)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = unit @ unit.T
    np.fill_diagonal(brute, -np.inf)
    expect = np.argsort(-brute, axis=1)[:, :4]
    assert np.array_equal(idx, expect)
    assert np.allclose(sims, np.take_along_axis(brute, expect, 1), atol=1e-5)
    assert all(set(idx[i] // 5) == {i // 5} for i in range(len(x)))  # 4 neighbours = cluster


def test_find_pairs_within_clusters_compatible_and_seeded():
    x = clustered()
    keys = [f"c{i:02d}" for i in range(len(x))]
    stats = [ms.MusicStats(120.0, "C major")] * len(x)
    stats[0] = ms.MusicStats(90.0, "C major")  # tempo-incompatible with everyone
    pairs = find_pairs(keys, x, stats, num_pairs=8, k=4, seed=1)
    assert len(pairs) == 8
    for p in pairs:
        a, b = int(p.source[1:]), int(p.target[1:])
        assert a // 5 == b // 5 and 0 not in (a, b)
    assert len({frozenset((p.source, p.target)) for p in pairs}) == 8
    used = [k for p in pairs for k in (p.source, p.target)]
    assert max(used.count(k) for k in used) <= 2
    assert [p.similarity for p in pairs] == sorted((p.similarity for p in pairs), reverse=True)
    assert pairs == find_pairs(keys, x, stats, num_pairs=8, k=4, seed=1)
