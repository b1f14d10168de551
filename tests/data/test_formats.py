"""m2ugen.data.formats and m2ugen.data.spec on small hand-written dataset files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from m2ugen.data.example import Example
from m2ugen.data.formats import DatasetEntry, read_dataset
from m2ugen.data.spec import collect, load_spec
from m2ugen.errors import ConfigError, M2UGenError
from m2ugen.media import save_audio


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _media(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / name).write_bytes(b"not decoded unless decode=True")
    return root


def _read(entry: DatasetEntry, stage: int, **kw) -> list[Example]:
    examples, bad = read_dataset(entry, stage, **kw)
    assert bad == []
    return examples


@pytest.fixture
def mucaps(tmp_path: Path) -> DatasetEntry:
    root = _media(tmp_path / "audio", "a.wav", "b.mp3")
    file = _write(tmp_path / "mucaps.json", {"a.wav": "Calm piano.", "b.mp3": "Fast drums."})
    return DatasetEntry("mucaps", file, root=root)


def test_mucaps_stage1_is_captioning(mucaps: DatasetEntry) -> None:
    examples = _read(mucaps, 1)
    assert examples == [
        Example("", "Calm piano.", audio=mucaps.root / "a.wav", source=f"{mucaps.file}#0"),
        Example("", "Fast drums.", audio=mucaps.root / "b.mp3", source=f"{mucaps.file}#1"),
    ]
    assert all(e.audio.is_absolute() for e in examples)


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_mucaps_after_stage1_is_caption_to_music(mucaps: DatasetEntry, stage: str) -> None:
    (mucaps.root / "a.wav").unlink()  # text to music: the audio is not used
    assert _read(mucaps, stage) == [
        Example("Calm piano.", "Calm piano.", music_caption="Calm piano.",
                source=f"{mucaps.file}#0"),
        Example("Fast drums.", "Fast drums.", music_caption="Fast drums.",
                source=f"{mucaps.file}#1"),
    ]


def test_image_captions_both_layouts(tmp_path: Path) -> None:
    root = _media(tmp_path / "img", "x.png", "y.jpg")
    flat = _write(tmp_path / "flat.json", {"x.png": "A red circle."})
    assert _read(DatasetEntry("image_captions", flat, root=root), 1) == [
        Example("", "A red circle.", image=root / "x.png", source=f"{flat}#0")]
    coco = _write(tmp_path / "coco.json", {
        "images": [{"id": 7, "file_name": "x.png"}, {"id": 9, "file_name": "y.jpg"}],
        "annotations": [{"image_id": 9, "caption": "A dog."}, {"image_id": 7, "caption": "Red."},
                        {"image_id": 9, "caption": "A brown dog."}]})
    examples = _read(DatasetEntry("image_captions", coco, root=root), 1)
    assert [(e.response, e.image.name, e.source) for e in examples] == [
        ("A dog.", "y.jpg", f"{coco}#0"), ("Red.", "x.png", f"{coco}#1"),
        ("A brown dog.", "y.jpg", f"{coco}#2")]
    assert all(e.instruction == "" and e.audio is None for e in examples)
    with pytest.raises(ConfigError, match="stage1"):
        read_dataset(DatasetEntry("image_captions", coco, root=root), 2)


def test_video_captions_root_defaults_to_file_dir(tmp_path: Path) -> None:
    _media(tmp_path, "v.mp4")
    file = _write(tmp_path / "muvideo.json", {"v.mp4": "A square moving left."})
    assert _read(DatasetEntry("video_captions", file), 1) == [
        Example("", "A square moving left.", video=tmp_path / "v.mp4", source=f"{file}#0")]


def test_musicqa_one_example_per_turn_with_history(tmp_path: Path) -> None:
    root = _media(tmp_path / "audio", "q.wav")
    conv = [{"from": "human", "value": "Instrument?"}, {"from": "gpt", "value": "Piano."},
            {"from": "human", "value": "Tempo?"}, {"from": "gpt", "value": "90 BPM."}]
    file = _write(tmp_path / "qa.json", [{"audio_name": "q.wav", "conversation": conv}])
    audio, src = root / "q.wav", f"{file}#0"
    assert _read(DatasetEntry("musicqa", file, root=root), 3) == [
        Example("Instrument?", "Piano.", audio=audio, source=src),
        Example("Tempo?", "90 BPM.", history=[("Instrument?", "Piano.")], audio=audio,
                source=src),
    ]


def test_alpaca_both_shapes(tmp_path: Path) -> None:
    file = _write(tmp_path / "alpaca.json", [
        {"instruction": "Name the notes.", "input": "C major triad", "output": "C, E, G."},
        {"instruction": "What is BPM?", "input": "", "output": "Beats per minute."},
        {"instruction": "Define tempo.", "output": "Speed."},
        {"conversation": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                          {"from": "human", "value": "Key?"}, {"from": "gpt", "value": "C."}]},
    ])
    assert _read(DatasetEntry("alpaca", file), 3) == [
        Example("Name the notes.\n\nC major triad", "C, E, G.", source=f"{file}#0"),
        Example("What is BPM?", "Beats per minute.", source=f"{file}#1"),
        Example("Define tempo.", "Speed.", source=f"{file}#2"),
        Example("Hi", "Hello", source=f"{file}#3"),
        Example("Key?", "C.", history=[("Hi", "Hello")], source=f"{file}#3"),
    ]


def _instruct_record(inp: str, out: str, modality: str, **gpt) -> dict:
    return {"input_file": inp, "output_file": out, "conversation": [
        {"from": "human", "value": f"Music for this {modality}.", "input_modality": modality,
         "caption": "input caption"},
        {"from": "gpt", "value": "Here it is.", **gpt}]}


def test_instruct_media_slot_and_music_caption(tmp_path: Path) -> None:
    inp = _media(tmp_path / "in", "i.png", "v.mp4", "a.wav")
    out = _media(tmp_path / "out", "o.wav")
    music = {"caption": "Calm organ.", "output_modality": "audio"}
    file = _write(tmp_path / "mu.json", [
        _instruct_record("i.png", "o.wav", "image", **music),
        _instruct_record("v.mp4", "o.wav", "video", **music),
        _instruct_record("a.wav", "o.wav", "audio", **music),
        _instruct_record("a.wav", "", "audio"),  # a text answer: no music caption
    ])
    examples = _read(DatasetEntry("instruct", file, input_root=inp, output_root=out), 3)
    assert examples == [
        Example("Music for this image.", "Here it is.", image=inp / "i.png",
                music_caption="Calm organ.", music_file=out / "o.wav", source=f"{file}#0"),
        Example("Music for this video.", "Here it is.", video=inp / "v.mp4",
                music_caption="Calm organ.", music_file=out / "o.wav", source=f"{file}#1"),
        Example("Music for this audio.", "Here it is.", audio=inp / "a.wav",
                music_caption="Calm organ.", music_file=out / "o.wav", source=f"{file}#2"),
        Example("Music for this audio.", "Here it is.", audio=inp / "a.wav",
                source=f"{file}#3"),
    ]


def test_bad_records_are_collected_with_index_and_path(tmp_path: Path) -> None:
    inp = _media(tmp_path / "in", "ok.png", "a.wav")
    (inp / "empty.png").write_bytes(b"")
    out = _media(tmp_path / "out", "o.wav")
    music = {"caption": "Organ.", "output_modality": "audio"}
    wrong_type = _instruct_record("ok.png", "o.wav", "image", **music)
    wrong_type["conversation"][0]["value"] = 42
    no_key = _instruct_record("ok.png", "o.wav", "image", **music)
    del no_key["conversation"][1]["caption"]
    file = _write(tmp_path / "mu.json", [
        _instruct_record("ok.png", "o.wav", "image", **music),       # 0 good
        _instruct_record("gone.png", "o.wav", "image", **music),     # 1 missing file
        _instruct_record("empty.png", "o.wav", "image", **music),    # 2 empty file
        no_key,                                                      # 3 missing key
        wrong_type,                                                  # 4 wrong type
        _instruct_record("ok.png", "o.wav", "smell", **music),       # 5 unknown modality
        _instruct_record("ok.png", "lost.wav", "image", **music),    # 6 missing output
        _instruct_record("ok.png", "o.wav", "audio", **music),       # 7 image in audio slot
        "not a record",                                              # 8
    ])
    examples, bad = read_dataset(DatasetEntry("instruct", file, input_root=inp,
                                              output_root=out), 3)
    assert [e.source for e in examples] == [f"{file}#0"]
    by_index = {b.index: b for b in bad}
    assert sorted(by_index) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(b.source_file == file for b in bad)
    expected = {1: (inp / "gone.png", "not found"), 2: (inp / "empty.png", "empty"),
                3: (None, "missing key"), 4: (None, "must be a string"),
                5: (None, "unknown input_modality 'smell'"), 6: (out / "lost.wav", "not found"),
                7: (inp / "ok.png", "not audio"), 8: (None, "must be a JSON object")}
    for index, (path, reason) in expected.items():
        assert by_index[index].path == path, by_index[index]
        assert reason in by_index[index].reason, by_index[index]
    assert str(by_index[1]) == f"{file}#1 {inp / 'gone.png'}: image file not found"


def test_bad_conversations_and_coco_references(tmp_path: Path) -> None:
    root = _media(tmp_path, "q.wav", "x.png")
    turns = [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Hello"}]
    qa = _write(tmp_path / "qa.json", [
        {"audio_name": "q.wav", "conversation": turns},
        {"audio_name": "q.wav", "conversation": turns[1:]},
        {"audio_name": "", "conversation": turns},
    ])
    _, bad = read_dataset(DatasetEntry("musicqa", qa, root=root), 3)
    assert [(b.index, b.path) for b in bad] == [(0, None), (1, None), (2, None)]
    assert "expected 'human'" in bad[0].reason and "1 turns" in bad[1].reason
    assert "'audio_name' is empty" in bad[2].reason
    coco = _write(tmp_path / "coco.json", {
        "images": [{"id": 1, "file_name": "x.png"}, {"id": 2}],
        "annotations": [{"image_id": 1, "caption": "ok"}, {"image_id": 2, "caption": "x"},
                        {"image_id": 1, "caption": ""}]})
    examples, bad = read_dataset(DatasetEntry("image_captions", coco, root=root), 1)
    assert len(examples) == 1
    assert [b.index for b in bad] == [1, 1, 2]
    assert "images[1]" in bad[0].reason and "image_id 2" in bad[1].reason


def test_decode_catches_unreadable_media(tmp_path: Path) -> None:
    root = _media(tmp_path, "junk.wav")
    save_audio(tmp_path / "good.wav", np.zeros(2400, np.float32), 24_000)
    file = _write(tmp_path / "c.json", {"good.wav": "Silence.", "junk.wav": "Noise."})
    entry = DatasetEntry("mucaps", file, root=root)
    assert len(_read(entry, 1)) == 2  # decoding is off by default
    examples, bad = read_dataset(entry, 1, decode=True)
    assert [e.response for e in examples] == ["Silence."]
    assert bad[0].index == 1 and "cannot decode" in bad[0].reason
    _, unchecked = read_dataset(DatasetEntry("mucaps", file, root=tmp_path / "nowhere"), 1,
                                check_media=False)
    assert unchecked == []
    with pytest.raises(ConfigError, match="nowhere: media directory not found; fix 'root:'"):
        read_dataset(DatasetEntry("mucaps", file, root=tmp_path / "nowhere"), 1)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid UTF-8 JSON"), ('{"a": 1}', "list of records"), (None, "not found")])
def test_unreadable_dataset_file_is_config_error(tmp_path: Path, content, match) -> None:
    file = tmp_path / "broken.json"
    if content is not None:
        file.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        read_dataset(DatasetEntry("musicqa", file), 3)
    assert str(file) in str(info.value)


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "data.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_spec_resolves_paths_and_applies_weight(tmp_path: Path, mucaps) -> None:
    path = _spec(tmp_path, "stage1:\n  - {format: mucaps, file: ../mucaps.json, root: ../audio,"
                           " weight: 3}\nstage2:\n  - {format: mucaps, file: ../mucaps.json}\n")
    spec = load_spec(path)
    (entry,) = spec.entries("stage1")
    assert entry == DatasetEntry("mucaps", mucaps.file, root=mucaps.root, weight=3)
    assert spec.entries(2)[0].root is None and spec.entries(3) == []
    assert len(collect(spec, 1, skip_bad=False)) == 6
    with pytest.raises(ConfigError, match="no entries for stage3"):
        collect(spec, 3, skip_bad=True)


@pytest.mark.parametrize("text, match", [
    ("stage4: []\n", "valid keys: stage1, stage2, stage3"),
    ("stage1:\n  - {format: coco, file: x.json}\n", "use one of mucaps, image_captions"),
    ("stage1:\n  - {format: alpaca, file: x.json, root: y}\n", "valid keys: format, file"),
    ("stage1:\n  - {format: mucaps}\n", "missing 'file'"),
    ("stage3:\n  - {format: image_captions, file: x.json}\n", "not used in stage3"),
    ("stage1:\n  - {format: mucaps, file: x.json, weight: 0}\n", "integer from 1 to"),
    ("stage1: {format: mucaps}\n", "must be a list"),
    ("stage1: [\n", "not valid YAML"),
])
def test_bad_spec_is_config_error(tmp_path: Path, text: str, match: str) -> None:
    path = _spec(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_collect_skip_bad_counts_or_raises(tmp_path: Path, mucaps, caplog) -> None:
    data = json.loads(mucaps.file.read_text())
    data.update({"missing.wav": "Gone.", "a.wav": "Calm piano."})
    data["b.mp3"] = ""
    _write(mucaps.file, data)
    spec = load_spec(_spec(tmp_path, "stage1:\n  - {format: mucaps, file: ../mucaps.json,"
                                     " root: ../audio}\n"))
    with pytest.raises(M2UGenError) as info:
        collect(spec, 1, skip_bad=False)
    message = str(info.value)
    assert "\n" not in message and "2 bad record(s)" in message and "--skip-bad" in message
    assert f"{mucaps.file}#1: caption of 'b.mp3' must be a non-empty string" in message
    with caplog.at_level(logging.WARNING, logger="m2ugen"):
        examples = collect(spec, 1, skip_bad=True)
    assert [e.response for e in examples] == ["Calm piano."]
    assert "skipping 2 bad record(s)" in caplog.text
    assert f"{mucaps.file}#2 {mucaps.root / 'missing.wav'}: audio file not found" in caplog.text
