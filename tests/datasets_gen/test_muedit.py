"""MUEdit pipeline end to end on synthetic clips of known tempo and key: collect → pairs
(tiny MERT embeddings + faiss + tempo/key filter) → captions → edit instructions."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # datasets_gen lives beside the m2ugen package, not inside it
    sys.path.insert(0, str(ROOT))

from datasets_gen.common import synthetic  # noqa: E402
from datasets_gen.common.music_stats import MusicStats, compatible  # noqa: E402


def step(name: str):
    return importlib.import_module(f"datasets_gen.MUEdit.{name}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("muedit_inputs")
    synthetic.write_audio(root / "audio", 9)
    return {"audio": root / "audio",
            "m2ugen": synthetic.build_tiny_music_captioner(root / "m2ugen"),
            "audio_captioner": synthetic.build_tiny_audio_captioner(root / "audio_captioner"),
            "chat": synthetic.build_tiny_chat_llm(root / "chat")}


def pair_args(out: Path, inputs: dict[str, Path], *extra: str) -> list[str]:
    return ["--out", str(out), "--encoder", str(inputs["m2ugen"]), "--num-pairs", "3",
            "--clip-seconds", "2", "--seed", "3", "--batch-size", "4", *extra]


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("muedit")
    assert step("01_collect").run(["--out", str(out), "--audio-dir", str(inputs["audio"])]) == 0
    assert step("02_pairs").run(pair_args(out, inputs)) == 0
    common = ["--out", str(out), "--max-new-tokens", "5"]
    assert step("03_caption").run([*common, "--model", str(inputs["m2ugen"])]) == 0
    assert step("04_instructions").run([*common, "--chat-model", str(inputs["chat"])]) == 0
    return out


def test_pairs_are_compatible_and_distinct(full_run):
    pairs = json.loads((full_run / "pairs.json").read_text())
    assert len(pairs) == 3
    stats = {k: r for k, r in json.loads((full_run / "02_pairs.json").read_text()).items()}
    for p in pairs:
        a, b = stats[p["source"]], stats[p["target"]]
        assert compatible(MusicStats(a["bpm"], a["music_key"]),
                          MusicStats(b["bpm"], b["music_key"]))
        # the synthetic clips' true tempos were recovered
        i, j = int(p["source"][4:7]), int(p["target"][4:7])
        assert abs(a["bpm"] - synthetic.clip_spec(i)[0]) < 3
        assert synthetic.clip_spec(i)[0] == synthetic.clip_spec(j)[0]
    assert len({frozenset((p["source"], p["target"])) for p in pairs}) == 3


def test_end_to_end_instructions(full_run):
    pairs = json.loads((full_run / "pairs.json").read_text())
    records = json.loads((full_run / "MUEditInstructions.json").read_text())
    assert sorted((r["input_file"], r["output_file"]) for r in records) == \
        sorted((p["source"], p["target"]) for p in pairs)
    captions = json.loads((full_run / "03_caption.json").read_text())
    for r in records:
        human, gpt = r["conversation"]
        assert human["input_modality"] == "audio" and gpt["output_modality"] == "audio"
        assert human["caption"] == captions[r["input_file"]]["caption"]
        assert gpt["caption"] == captions[r["output_file"]]["caption"]
        assert human["value"] and gpt["value"]
    pytest.importorskip("m2ugen.data.formats")
    examples, bad = synthetic.load_with_training_reader(full_run / "MUEdit.dataset.json", 3)
    assert not bad and len(examples) == 3


def test_sharded_pair_step_merged_equals_unsharded(full_run, inputs, tmp_path):
    out = tmp_path / "work"
    (out).mkdir()
    (out / "01_collect.jsonl").write_text((full_run / "01_collect.jsonl").read_text())
    for shard in ("0", "1", "2"):
        assert step("02_pairs").run(pair_args(out, inputs, "--shard", shard,
                                              "--num-shards", "3")) == 0
    assert not (out / "pairs.json").exists()
    assert step("02_pairs").run(pair_args(out, inputs, "--merge")) == 0
    assert json.loads((out / "pairs.json").read_text()) == \
        json.loads((full_run / "pairs.json").read_text())


def test_captions_with_an_audio_language_model(full_run, inputs, tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    for name in ("01_collect.jsonl", "02_pairs.jsonl", "pairs.json"):
        shutil.copy(full_run / name, out)
    assert step("03_caption").run(["--out", str(out), "--model", str(inputs["audio_captioner"]),
                                   "--max-new-tokens", "5", "--batch-size", "4"]) == 0
    pairs = json.loads((out / "pairs.json").read_text())
    captions = json.loads((out / "03_caption.json").read_text())
    assert sorted(captions) == sorted({p[s] for p in pairs for s in ("source", "target")})
    assert all(isinstance(r["caption"], str) and r["caption"] for r in captions.values())
