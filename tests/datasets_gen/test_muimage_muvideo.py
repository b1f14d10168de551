"""MUImage and MUVideo pipelines end to end on synthetic media with tiny random models:
collect pairs → caption music → caption images / video → instructions (chat LLM)."""

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


def step(dataset: str, name: str):
    return importlib.import_module(f"datasets_gen.{dataset}.{name}")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen_models")
    return {"m2ugen": synthetic.build_tiny_music_captioner(root / "m2ugen"),
            "audio": synthetic.build_tiny_audio_captioner(root / "audio_captioner"),
            "blip": synthetic.build_tiny_blip(root / "blip"),
            "video": synthetic.build_tiny_video_captioner(root / "video"),
            "chat": synthetic.build_tiny_chat_llm(root / "chat")}


def run_pipeline(dataset: str, out: Path, models: dict[str, Path], collect: list[str],
                 music: str = "m2ugen") -> None:
    """All four steps; `music`: the music captioner (m2ugen, or audio: Qwen2-Audio)."""
    kind = "images" if dataset == "MUImage" else "videos"
    captioner = models["blip"] if dataset == "MUImage" else models["video"]
    common = ["--out", str(out), "--max-new-tokens", "5"]
    assert step(dataset, "01_collect").run(["--out", str(out), *collect]) == 0
    assert step(dataset, "02_caption_music").run([*common, "--model", str(models[music])]) == 0
    assert step(dataset, f"03_caption_{kind}").run([*common, "--captioner", str(captioner),
                                                    "--num-beams", "1"]) == 0
    assert step(dataset, "04_instructions").run([*common, "--chat-model", str(models["chat"])]) == 0


def check_schema(records: list[dict], modality: str) -> None:
    for r in records:
        assert set(r) == {"input_file", "output_file", "conversation"}
        human, gpt = r["conversation"]
        assert human["from"] == "human" and human["input_modality"] == modality
        assert gpt["from"] == "gpt" and gpt["output_modality"] == "audio"
        assert all(isinstance(t[f], str) and t[f] for t in (human, gpt)
                   for f in ("value", "caption"))


@pytest.fixture(scope="module")
def image_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("muimage_media")
    synthetic.write_images(root / "images", 4)
    synthetic.write_audio(root / "audio", 3)  # clip003.png has no music: skipped
    return {"images": root / "images", "audio": root / "audio"}


def image_collect(inputs: dict[str, Path]) -> list[str]:
    return ["--image-dir", str(inputs["images"]), "--audio-dir", str(inputs["audio"])]


@pytest.fixture(scope="module")
def muimage(models, image_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("muimage")
    run_pipeline("MUImage", out, models, image_collect(image_inputs))
    return out


def test_muimage_end_to_end(muimage):
    records = json.loads((muimage / "MUImageInstructions.json").read_text())
    assert [r["input_file"] for r in records] == ["clip000.png", "clip001.png", "clip002.png"]
    assert [r["output_file"] for r in records] == ["clip000.wav", "clip001.wav", "clip002.wav"]
    check_schema(records, "image")
    collected = json.loads((muimage / "01_collect.json").read_text())
    assert collected["clip003"]["skipped"] == "no music file with the same name"
    pytest.importorskip("m2ugen.data.formats")
    examples, bad = synthetic.load_with_training_reader(muimage / "MUImage.dataset.json", 3)
    assert not bad and len(examples) == 3


def test_muimage_interrupted_instructions_resume(muimage, models, image_inputs, tmp_path,
                                                 monkeypatch):
    out = tmp_path / "work"
    for name in ("01_collect", "02_caption_music", "03_caption_images"):
        (out / f"{name}.jsonl").parent.mkdir(exist_ok=True)
        (out / f"{name}.jsonl").write_text((muimage / f"{name}.jsonl").read_text())
    ins = step("MUImage", "04_instructions")
    real = ins.STEP.processor

    def dying(args):
        process, calls = real(args), []

        def wrapped(batch):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return process(batch)
        return wrapped

    args = ["--out", str(out), "--max-new-tokens", "5", "--chat-model", str(models["chat"]),
            "--batch-size", "2"]
    with monkeypatch.context() as m:
        m.setattr(ins.STEP, "processor", dying)
        with pytest.raises(KeyboardInterrupt):
            ins.run(args)
    assert len((out / "04_instructions.jsonl").read_text().splitlines()) == 2
    assert ins.run(args) == 0
    lines = (out / "04_instructions.jsonl").read_text().splitlines()
    keys = [json.loads(x)["key"] for x in lines]
    assert sorted(keys) == ["clip000", "clip001", "clip002"]
    assert json.loads((out / "MUImageInstructions.json").read_text()) == \
        json.loads((muimage / "MUImageInstructions.json").read_text())


def test_muimage_music_captions_with_an_audio_language_model(muimage, models, tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    shutil.copy(muimage / "01_collect.jsonl", out)
    assert step("MUImage", "02_caption_music").run(
        ["--out", str(out), "--model", str(models["audio"]), "--max-new-tokens", "5",
         "--dtype", "bfloat16"]) == 0
    captions = json.loads((out / "02_caption_music.json").read_text())
    assert sorted(captions) == ["clip000", "clip001", "clip002"]
    assert all(isinstance(r["caption"], str) and r["caption"] for r in captions.values())


def test_muvideo_end_to_end_with_the_videos_own_music(models, tmp_path):
    """(its music captioned by the audio-language model, Qwen2-Audio)"""
    videos = tmp_path / "videos"
    synthetic.write_videos(videos, 2)
    out = tmp_path / "work"
    run_pipeline("MUVideo", out, models, ["--video-dir", str(videos)], music="audio")
    records = json.loads((out / "MUVideoInstructions.json").read_text())
    assert [(r["input_file"], r["output_file"]) for r in records] == \
        [("clip000.mp4", "clip000.wav"), ("clip001.mp4", "clip001.wav")]
    check_schema(records, "video")
    assert (out / "audio" / "clip000.wav").stat().st_size > 1000  # extracted sound track
    pytest.importorskip("m2ugen.data.formats")
    examples, bad = synthetic.load_with_training_reader(out / "MUVideo.dataset.json", 3)
    assert not bad and len(examples) == 2
