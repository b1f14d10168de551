"""Tests for m2ugen.media. Every file is generated into tmp_path; nothing is downloaded."""

from __future__ import annotations

import os
import re
import struct
import sys
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from m2ugen.errors import MediaError
from m2ugen.media import (
    MediaSpec,
    _reason,
    audio_duration,
    guess_modality,
    load_audio,
    load_image,
    load_media,
    load_video,
    save_audio,
)

# ----------------------------------------------------------------------------- helpers


def _sine(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _raises(path: Path, *fragments: str):
    """pytest.raises(MediaError) whose message contains the file name and each fragment."""
    pattern = re.escape(path.name) + "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    return pytest.raises(MediaError, match=pattern)


def _write_aac(path: Path, sr: int = 16000, seconds: float = 1.0) -> np.ndarray:
    """Encode a mono sine as AAC into an MP4/M4A container with PyAV."""
    x = _sine(sr, seconds)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sr, layout="mono")
        for start in range(0, len(x), 1024):
            frame = av.AudioFrame.from_ndarray(
                x[None, start : start + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return x


def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


# Frame i is solid grey with red = green = blue = i * RED_STEP. Grey survives yuv420p almost
# exactly (it is pure luma); saturated colours drift by up to half a step.
RED_STEP = 6


def _write_video(path: Path, n_frames: int, fps: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        # Intra-only at a high bit rate, so mpeg4 (the fallback codec) keeps flat colours too.
        stream.codec_context.gop_size, stream.bit_rate = 1, 4_000_000
        for i in range(n_frames):
            rgb = np.empty((48, 64, 3), dtype=np.uint8)
            rgb[...] = i * RED_STEP
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _frame_ids(frames: np.ndarray) -> np.ndarray:
    """Recover each frame's source index from its mean red value."""
    return np.rint(frames[..., 0].mean(axis=(1, 2)) / RED_STEP).astype(int)


def _use_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Select the video backend. `sys.modules["decord"] = None` makes `import decord`
    raise ImportError, simulating a platform without decord wheels."""
    if backend == "decord":
        pytest.importorskip("decord")
    else:
        monkeypatch.setitem(sys.modules, "decord", None)


# ----------------------------------------------------------------------------- audio


@pytest.mark.parametrize("file_sr", [16000, 44100])
@pytest.mark.parametrize("target_sr", [16000, 24000])
def test_wav_mono_resampled_length(tmp_path: Path, file_sr: int, target_sr: int) -> None:
    path = tmp_path / "mono.wav"
    sf.write(path, _sine(file_sr, 1.5), file_sr)
    y = load_audio(path, sr=target_sr)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 1.5 * target_sr) <= 1
    assert _rms(y) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_wav_same_rate_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "same.wav"
    x = _sine(16000, 0.5)
    sf.write(path, x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, sr=16000), x)


@pytest.mark.parametrize("file_sr", [16000, 44100])
def test_stereo_downmix_is_channel_mean(tmp_path: Path, file_sr: int) -> None:
    path = tmp_path / "stereo.wav"
    left = _sine(file_sr, 1.0)
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1), file_sr, subtype="FLOAT")
    y = load_audio(path, sr=file_sr)
    np.testing.assert_allclose(y, left / 2, atol=1e-6)
    assert np.abs(y).max() == pytest.approx(0.25, abs=1e-3)
    assert abs(len(load_audio(path, sr=16000)) - 16000) <= 1


@pytest.mark.parametrize("fmt, ext", [("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_compressed_formats(tmp_path: Path, fmt: str, ext: str) -> None:
    path = tmp_path / f"tone.{ext}"
    try:
        sf.write(path, _sine(44100, 1.0), 44100, format=fmt)
    except (sf.LibsndfileError, TypeError, ValueError) as e:
        pytest.skip(f"this libsndfile cannot write {fmt}: {e}")
    y = load_audio(path, sr=16000)
    # Lossy codecs add encoder delay/padding; allow 0.1 s.
    assert abs(len(y) - 16000) <= 1600
    assert _rms(y) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


@pytest.mark.parametrize("ext", ["m4a", "mp4"])
def test_aac_via_pyav(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"tone.{ext}"
    _write_aac(path, sr=22050)
    y = load_audio(path, sr=16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) <= 1600
    assert _rms(y[2000:-2000]) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    assert audio_duration(path) == pytest.approx(1.0, abs=0.1)


def test_max_seconds_exceeded(tmp_path: Path) -> None:
    wav = tmp_path / "long.wav"
    sf.write(wav, _sine(16000, 2.0), 16000)
    with _raises(wav, "2.0 s", "1 s limit", "trim it"):
        load_audio(wav, sr=16000, max_seconds=1.0)
    assert len(load_audio(wav, sr=16000, max_seconds=None)) == 32000

    m4a = tmp_path / "long.m4a"
    _write_aac(m4a, seconds=2.0)
    with _raises(m4a, "limit"):
        load_audio(m4a, sr=16000, max_seconds=1.0)


def test_audio_duration_wav(tmp_path: Path) -> None:
    path = tmp_path / "d.wav"
    sf.write(path, _sine(8000, 0.75), 8000)
    assert audio_duration(path) == pytest.approx(0.75)


def test_audio_missing_directory_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with _raises(missing, "file not found"):
        load_audio(missing, sr=16000)
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    with _raises(folder, "directory"):
        load_audio(folder, sr=16000)
    empty = tmp_path / "empty.wav"
    empty.touch()
    with _raises(empty, "file is empty"):
        load_audio(empty, sr=16000)


def test_audio_corrupt_and_text(tmp_path: Path) -> None:
    corrupt = tmp_path / "noise.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with _raises(corrupt, "cannot decode audio", "soundfile", "PyAV", "supported"):
        load_audio(corrupt, sr=16000)
    with _raises(corrupt, "cannot decode audio", "soundfile", "PyAV"):
        audio_duration(corrupt)
    text = tmp_path / "notes.txt"
    text.write_text("not audio\n" * 20)
    with _raises(text, "cannot decode audio"):
        load_audio(text, sr=16000)


def test_audio_zero_samples_and_nan(tmp_path: Path) -> None:
    silent = tmp_path / "zero.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), 16000)
    assert silent.stat().st_size > 0
    with _raises(silent, "contains no audio samples"):
        load_audio(silent, sr=16000)
    nan = tmp_path / "nan.wav"
    x = _sine(16000, 0.1)
    x[5] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with _raises(nan, "NaN"):
        load_audio(nan, sr=16000)


def test_save_audio_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir" / "out.wav"
    x = _sine(16000, 0.5, amp=0.9)
    save_audio(out, x, 16000)
    assert sf.info(str(out)).subtype == "PCM_16"
    np.testing.assert_allclose(load_audio(out, sr=16000), x, atol=1.0 / 32767)
    assert os.listdir(out.parent) == ["out.wav"]  # no temp file left behind

    save_audio(out, np.full(100, 2.0, dtype=np.float32), 16000)  # overwrite; clips
    y = load_audio(out, sr=16000)
    assert len(y) == 100 and np.allclose(y, 1.0, atol=1e-4)
    assert os.listdir(out.parent) == ["out.wav"]


# ----------------------------------------------------------------------------- image


def _load_px(path: Path) -> tuple[int, int, int]:
    img = load_image(path)
    assert img.mode == "RGB"
    return img.getpixel((0, 0))


def test_image_modes(tmp_path: Path) -> None:
    Image.new("RGB", (8, 6), (10, 20, 30)).save(tmp_path / "rgb.png")
    assert load_image(tmp_path / "rgb.png").size == (8, 6)
    assert _load_px(tmp_path / "rgb.png") == (10, 20, 30)

    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert _load_px(tmp_path / "grey.png") == (77, 77, 77)

    Image.new("LA", (4, 4), (77, 0)).save(tmp_path / "la.png")
    assert _load_px(tmp_path / "la.png") == (255, 255, 255)

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert img.getpixel((1, 1)) == (255, 0, 0)

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "pal.png", transparency=0)
    img = load_image(tmp_path / "pal.png")
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((1, 1)) == (0, 255, 0)

    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert all(c > 245 for c in _load_px(tmp_path / "cmyk.jpg"))


def test_image_16bit_grey_is_scaled(tmp_path: Path) -> None:
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (128,) * 3, (255,) * 3]


def test_image_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (40, 20), "blue").save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_image_decompression_bomb(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    with _raises(small, "20x20", "100"):
        load_image(small, max_pixels=100)

    # Headers claiming huge sizes: 81 Mpx trips our default 64 Mpx check before decoding;
    # 100 Mpx trips PIL's DecompressionBombWarning and 10 Gpx its DecompressionBombError.
    filters_before = list(warnings.filters)
    for side, fragment in ((9_000, "9000x9000"), (10_000, "bomb"), (100_000, "bomb")):
        bomb = tmp_path / f"bomb{side}.png"
        bomb.write_bytes(_png_header(side, side))
        with _raises(bomb, fragment):
            load_image(bomb)
    assert warnings.filters == filters_before  # the "error" filter stayed local


def test_image_truncated_missing_empty(tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(full, quality=95)
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with _raises(truncated, "cannot decode image"):
        load_image(truncated)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with _raises(text, "cannot decode image"):
        load_image(text)
    with _raises(tmp_path / "missing.png", "file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").touch()
    with _raises(tmp_path / "empty.png", "file is empty"):
        load_image(tmp_path / "empty.png")


# ----------------------------------------------------------------------------- video


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for n in (40, 5, 1):
        out[str(n)] = root / f"clip{n}.mp4"
        _write_video(out[str(n)], n)
    return out


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_uniform_sampling(
    clips: dict[str, Path], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_backend(backend, monkeypatch)
    frames = load_video(clips["40"])
    assert frames.shape == (32, 48, 64, 3) and frames.dtype == np.uint8
    expected = np.rint(np.linspace(0, 39, 32)).astype(int)
    np.testing.assert_array_equal(_frame_ids(frames), expected)
    assert _frame_ids(frames)[0] == 0 and _frame_ids(frames)[-1] == 39


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_short_clips_repeat_frames(
    clips: dict[str, Path], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_backend(backend, monkeypatch)
    ids = _frame_ids(load_video(clips["5"]))
    assert len(ids) == 32 and np.all(np.diff(ids) >= 0) and set(ids) == set(range(5))
    one = load_video(clips["1"], num_frames=8)
    assert one.shape == (8, 48, 64, 3) and (_frame_ids(one) == 0).all()


def test_video_pyav_without_stored_frame_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "clip.mkv"  # Matroska stores no frame count: PyAV must count them
    _write_video(path, 40)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    _use_backend("pyav", monkeypatch)
    ids = _frame_ids(load_video(path, num_frames=8))
    np.testing.assert_array_equal(ids, np.rint(np.linspace(0, 39, 8)).astype(int))


def test_video_backends_agree(clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("decord")
    with_decord = load_video(clips["40"], num_frames=4).astype(int)
    monkeypatch.setitem(sys.modules, "decord", None)
    with_pyav = load_video(clips["40"], num_frames=4).astype(int)
    assert np.abs(with_decord - with_pyav).max() <= 3


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_too_long(
    clips: dict[str, Path], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_backend(backend, monkeypatch)
    with _raises(clips["40"], "limit", "trim it"):
        load_video(clips["40"], max_seconds=1.0)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_errors(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_backend(backend, monkeypatch)
    audio_only = tmp_path / "audio_only.mp4"
    _write_aac(audio_only)
    with _raises(audio_only, "no video"):
        load_video(audio_only)
    whole = tmp_path / "whole.mp4"
    _write_video(whole, 20)
    data = whole.read_bytes()
    for tenths in range(1, 10):  # a cut file either fails to decode or says it may be cut
        cut = tmp_path / f"cut{tenths}.mp4"
        cut.write_bytes(data[: len(data) * tenths // 10])
        with pytest.raises(MediaError, match=re.escape(cut.name)) as err:
            load_video(cut)
        assert "cannot decode video" in str(err.value) or "cut short" in str(err.value)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).bytes(4096))
    with _raises(corrupt, "cannot decode video", "decord", "PyAV"):
        load_video(corrupt)
    with _raises(tmp_path / "gone.mp4", "file not found"):
        load_video(tmp_path / "gone.mp4")
    with pytest.raises(ValueError):
        load_video(corrupt, num_frames=0)


# ----------------------------------------------------------------------------- modality


@pytest.mark.parametrize(
    "name, modality",
    [
        ("a.wav", "audio"),
        ("b.MP3", "audio"),
        ("c.m4a", "audio"),
        ("d.flac", "audio"),
        ("e.png", "image"),
        ("f.JPG", "image"),
        ("g.mp4", "video"),
        ("h.webm", "video"),
    ],
)
def test_guess_modality(name: str, modality: str) -> None:
    assert guess_modality(name) == modality


def test_guess_modality_unknown() -> None:
    with pytest.raises(MediaError, match=r"notes\.txt.*'\.txt'.*\.wav"):
        guess_modality("notes.txt")
    with pytest.raises(MediaError, match=r"README.*\(none\)"):
        guess_modality("README")


# ----------------------------------------------------------------------------- load_media


def test_load_media_follows_the_spec_and_its_length_limits(tmp_path: Path) -> None:
    wav, clip = tmp_path / "two.wav", tmp_path / "clip.mp4"
    sf.write(wav, _sine(16000, 2.0), 16000)
    _write_video(clip, n_frames=20, fps=10)  # 2 s
    spec = MediaSpec(sample_rate=8000, num_frames=4)
    assert (spec.max_audio_seconds, spec.max_video_seconds) == (600.0, 3600.0)  # the loaders'
    assert load_media("audio", wav, spec).shape == (16000,)
    assert load_media("video", str(clip), spec).shape == (4, 48, 64, 3)
    assert load_media("image", spec, spec) is spec  # a loaded value passes through
    with _raises(wav, "2.0 s", "over the 1.5 s limit"):
        load_media("audio", wav, replace(spec, max_audio_seconds=1.5))
    with _raises(clip, "video is 2.0 s", "over the 1.5 s limit"):
        load_media("video", clip, replace(spec, max_video_seconds=1.5))
    unlimited = replace(spec, max_audio_seconds=None, max_video_seconds=None)
    assert load_media("audio", wav, unlimited).shape == (16000,)
    with pytest.raises(MediaError, match="'text' is not a modality"):
        load_media("text", wav, spec)


def test_a_long_decoder_reason_is_cut_with_an_ellipsis(tmp_path: Path) -> None:
    """A decoder's message of thousands of characters (FFmpeg can print a whole probe) is
    cut to 300 characters and marked as cut, so the error stays one readable line."""
    assert _reason(ValueError("short")) == "short"
    cut = _reason(ValueError("x" * 1000 + "\nsecond line"))
    assert cut == "x" * 300 + "..."
