"""MUCaps pipeline end to end on synthetic clips: collect → filter (AudioSet) → caption,
with each kind of music captioner: an m2ugen model and a transformers audio-language
model (tiny Qwen2-Audio). The download path is in test_collect.py."""

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


def step(name: str):
    return importlib.import_module(f"datasets_gen.MUCaps.{name}")


def interrupt_after(monkeypatch, module, batches: int) -> None:
    """Make the step's processor die (KeyboardInterrupt) after `batches` batches."""
    real = module.STEP.processor

    def processor(args):
        process, seen = real(args), []

        def wrapped(batch):
            seen.append(batch)
            if len(seen) > batches:
                raise KeyboardInterrupt
            return process(batch)
        return wrapped
    monkeypatch.setattr(module.STEP, "processor", processor)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mucaps_inputs")
    synthetic.write_audio(root / "audio", 6)
    csv, onto = synthetic.write_audioset(root / "audioset", [f"clip{i:03d}" for i in range(6)])
    return {"audio": root / "audio", "labels": csv, "ontology": onto}


BUILDERS = {"m2ugen": synthetic.build_tiny_music_captioner,
            "audio-language": synthetic.build_tiny_audio_captioner}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def inputs(request, media, tmp_path_factory) -> dict[str, Path]:
    """The media and one music captioner of each kind (the tests run once per kind)."""
    model = BUILDERS[request.param](tmp_path_factory.mktemp("captioner") / request.param)
    return {**media, "model": model}


def prepare(out: Path, inputs: dict[str, Path]) -> None:
    assert step("01_collect").run(["--out", str(out), "--audio-dir", str(inputs["audio"])]) == 0
    assert step("02_filter").run(["--out", str(out), "--labels", str(inputs["labels"]),
                                  "--ontology", str(inputs["ontology"])]) == 0


def caption_args(out: Path, inputs: dict[str, Path], *extra: str) -> list[str]:
    return ["--out", str(out), "--model", str(inputs["model"]), "--max-new-tokens", "5",
            "--batch-size", "1", *extra]


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mucaps_full")
    prepare(out, inputs)
    # batches of 3 (+1): the other runs go one clip at a time and must caption alike
    assert step("03_caption").run(caption_args(out, inputs, "--batch-size", "3")) == 0
    return out


def test_end_to_end_keeps_music_and_captions_it(full_run):
    captions = json.loads((full_run / "MUCapsCaptions.json").read_text())
    # every third synthetic clip is labelled speech only: filtered out, with the reason
    assert sorted(captions) == ["clip000.wav", "clip001.wav", "clip003.wav", "clip004.wav"]
    assert all(isinstance(c, str) and c for c in captions.values())
    filtered = json.loads((full_run / "02_filter.json").read_text())
    assert filtered["clip002.wav"]["skipped"] == "no music label"
    assert filtered["clip000.wav"]["music_labels"] == ["Piano"]
    entry = json.loads((full_run / "MUCaps.dataset.json").read_text())
    assert entry["format"] == "mucaps" and Path(entry["root"]).is_dir()


def test_output_loads_in_the_training_reader(full_run):
    pytest.importorskip("m2ugen.data.formats")
    examples, bad = synthetic.load_with_training_reader(full_run / "MUCaps.dataset.json", 1)
    assert not bad and len(examples) == 4


def test_interrupted_caption_step_resumes(full_run, inputs, tmp_path, monkeypatch):
    out = tmp_path / "work"
    prepare(out, inputs)
    caption = step("03_caption")
    with monkeypatch.context() as m:
        interrupt_after(m, caption, batches=2)
        with pytest.raises(KeyboardInterrupt):
            caption.run(caption_args(out, inputs))
    assert len((out / "03_caption.jsonl").read_text().splitlines()) == 2
    assert caption.run(caption_args(out, inputs)) == 0
    keys = [json.loads(x)["key"] for x in (out / "03_caption.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4
    assert (out / "MUCapsCaptions.json").read_text() == \
        (full_run / "MUCapsCaptions.json").read_text()


def test_sharded_caption_merged_equals_unsharded(full_run, inputs, tmp_path):
    out = tmp_path / "work"
    prepare(out, inputs)
    caption = step("03_caption")
    for shard in ("0", "1"):
        assert caption.run(caption_args(out, inputs, "--shard", shard, "--num-shards", "2")) == 0
    assert caption.run(caption_args(out, inputs, "--merge")) == 0
    assert (out / "MUCapsCaptions.json").read_text() == \
        (full_run / "MUCapsCaptions.json").read_text()


def test_limit_and_failures_per_item(media, tmp_path):
    audio = tmp_path / "audio"
    shutil.copytree(media["audio"], audio)
    (audio / "broken.wav").write_bytes(b"RIFF not really a wav")
    assert step("01_collect").run(["--out", str(tmp_path / "w"), "--audio-dir", str(audio),
                                   "--limit", "3"]) == 0
    records = json.loads((tmp_path / "w" / "01_collect.json").read_text())
    assert sorted(records) == ["broken.wav", "clip000.wav", "clip001.wav"]
    assert "cannot decode audio" in records["broken.wav"]["error"]
