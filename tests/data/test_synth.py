"""m2ugen.data.synth: a deterministic dataset in every format, whose captions are true."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from m2ugen.cli import build_parser
from m2ugen.data.formats import FORMATS, read_dataset
from m2ugen.data.spec import collect, load_spec, read_stage
from m2ugen.data.synth import COLOURS, SR, write_synthetic_dataset
from m2ugen.errors import ConfigError
from m2ugen.media import load_audio, load_video

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """The default-sized dataset, written once for this module; returns dataset.yaml."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", seed=0)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.suffix in (".json", ".wav", ".yaml", ".mp4", ".png")}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    small = {"n_audio": 3, "n_images": 1, "n_videos": 1}
    runs = [write_synthetic_dataset(tmp_path / name, seed=s, **small).parent
            for name, s in (("a", 5), ("b", 5), ("c", 6))]
    a, b, c = (_tree(r) for r in runs)
    assert len([k for k in a if k.endswith(".wav")]) == 4  # 3 clips + 1 edit
    assert a == b
    assert a["mucaps.json"] != c["mucaps.json"]


def test_every_format_loads_without_bad_records(synth: Path) -> None:
    spec = load_spec(synth)
    formats = {e.format for stage in (1, 2, 3) for e in spec.entries(stage)}
    assert formats == set(FORMATS)
    counts = {}
    for stage in (1, 2, 3):
        examples, bad = read_stage(spec, stage, decode=True)
        assert bad == [], bad[:3]
        counts[stage] = examples
    assert {m for e in counts[1] for m in e.media} == {"audio", "image", "video"}
    assert all(e.instruction == "" for e in counts[1])
    assert len(counts[2]) == 12 and all(e.music_caption == e.instruction for e in counts[2])
    stage3 = collect(spec, 3, skip_bad=False)
    assert {m for e in stage3 for m in e.media} == {"audio", "image", "video"}
    assert any(e.history for e in stage3)
    assert sum(e.music_caption is not None for e in stage3) == 6 + 4 + 4  # image, video, edit


def _captions(root: Path, name: str) -> dict[str, str]:
    return json.loads((root / name).read_text())


def _bpm(caption: str) -> int:
    return int(re.search(r"at (\d+) BPM", caption).group(1))


def _tempo(wave: np.ndarray) -> float:
    """Beat period from the autocorrelation of an onset envelope (10 ms frames)."""
    hop = SR // 100
    frames = wave[: wave.size // hop * hop].reshape(-1, hop)
    onset = np.maximum(0.0, np.diff(np.sqrt((frames ** 2).mean(axis=1))))
    onset -= onset.mean()
    ac = np.correlate(onset, onset, "full")[onset.size - 1:]
    lo, hi = 30, 100  # 0.3–1.0 s: 60–200 BPM
    return 60.0 / ((lo + int(np.argmax(ac[lo:hi]))) / 100)


def test_stated_tempo_is_real(synth: Path) -> None:
    root = synth.parent
    clips = {root / "audio" / k: v for k, v in _captions(root, "mucaps.json").items()}
    for rec in _captions(root, "muedit.json"):
        clips[root / "audio_edit" / rec["output_file"]] = rec["conversation"][1]["caption"]
    assert len(clips) == 16 and any("drum" in c for c in clips.values())
    for path, caption in clips.items():
        wave = load_audio(path, SR)
        assert 2.0 <= wave.size / SR <= 4.0
        assert _tempo(wave) == pytest.approx(_bpm(caption), rel=0.03), caption


def test_musicqa_answers_match_the_captions(synth: Path) -> None:
    root = synth.parent
    captions = _captions(root, "mucaps.json")
    for rec in _captions(root, "musicqa.json"):
        caption = captions[rec["audio_name"]]
        for turn in rec["conversation"][1::2]:
            for number in re.findall(r"(\d+) BPM", turn["value"]):
                assert int(number) == _bpm(caption)
            key = re.search(r"It is in (\S+ m\w+)\.", turn["value"])
            assert key is None or key.group(1) in caption


def test_muedit_instruction_matches_the_two_files(synth: Path) -> None:
    for rec in _captions(synth.parent, "muedit.json"):
        human, gpt = rec["conversation"]
        before, after = human["caption"], gpt["caption"]
        assert human["caption"] == _captions(synth.parent, "mucaps.json")[rec["input_file"]]
        if "BPM" in human["value"]:
            assert f"to {_bpm(after)} BPM" in human["value"] and _bpm(after) != _bpm(before)
        else:
            assert _bpm(after) == _bpm(before)
        assert ("Replace" in human["value"]) == (before.split()[2] != after.split()[2])


def _name(rgb: np.ndarray) -> str:
    """The colour's name; PIL draws without anti-aliasing, so the match is exact."""
    return {v: k for k, v in COLOURS.items()}[tuple(int(x) for x in rgb)]


def test_image_colour_is_the_dominant_non_background_colour(synth: Path) -> None:
    coco = _captions(synth.parent, "image_captions.json")
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    for ann in coco["annotations"][::2]:
        pixels = np.asarray(Image.open(synth.parent / "images" / files[ann["image_id"]]))
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        order = np.argsort(-counts)
        background, colour = _name(colours[order[0]]), _name(colours[order[1]])
        assert ann["caption"].split()[1] == colour
        assert ann["caption"].endswith(f" {background} background.")


def _centre(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(x, y) centre of the pixels that differ from the background colour."""
    ys, xs = np.nonzero(np.abs(frame - background).sum(axis=-1) > 90)
    return np.array([xs.mean(), ys.mean()])


def test_video_motion_matches_caption(synth: Path) -> None:
    for name, caption in _captions(synth.parent, "video_captions.json").items():
        frames = load_video(synth.parent / "videos" / name, num_frames=8).astype(float)
        assert frames.shape[1:] == (64, 64, 3)
        background = np.median(frames[0].reshape(-1, 3), axis=0)
        dx, dy = _centre(frames[-1], background) - _centre(frames[0], background)
        expected = {"left to right": (1, 0), "right to left": (-1, 0), "upward": (0, -1),
                    "downward": (0, 1)}
        (ex, ey), = [v for k, v in expected.items() if k in caption]
        assert np.sign(round(dx / 10)) == ex and np.sign(round(dy / 10)) == ey, caption


def test_videos_are_h264_which_browsers_play(synth: Path) -> None:
    """The app's chat shows the user's video with the browser's player: Chromium plays
    H.264 MP4s and shows nothing for MPEG-4 part 2 (checked in headless Chromium)."""
    for path in sorted((synth.parent / "videos").glob("*.mp4"))[:3]:
        with av.open(str(path)) as box:
            stream = box.streams.video[0]
            assert stream.codec_context.name == "h264", path
            assert stream.codec_context.pix_fmt == "yuv420p", path


def test_configs_copy_matches_the_written_spec(synth: Path) -> None:
    written, shipped = load_spec(synth), load_spec(REPO / "configs" / "data_synth.yaml")
    synth_dir = REPO / "data" / "synth"

    def rel(path: Path | None, base: Path) -> str | None:
        return None if path is None else str(path.relative_to(base))

    for stage in (1, 2, 3):
        for a, b in zip(written.entries(stage), shipped.entries(stage), strict=True):
            for field in ("file", "root", "input_root", "output_root"):
                assert rel(getattr(a, field), synth.parent) == rel(getattr(b, field), synth_dir)
            assert (a.format, a.weight) == (b.format, b.weight)


def test_cli_sub_command(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(["synth-data", str(tmp_path / "out"), "--seed", "1",
                              "--n-audio", "2", "--n-images", "1", "--n-videos", "1"])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and str(tmp_path / "out" / "dataset.yaml") in line
    assert "mucaps 2" in line and "muedit 1" in line
    entry = load_spec(tmp_path / "out" / "dataset.yaml").entries(1)[0]
    assert len(read_dataset(entry, 1)[0]) == 2
    with pytest.raises(ConfigError, match="n_videos=0"):
        write_synthetic_dataset(tmp_path / "none", n_videos=0)
