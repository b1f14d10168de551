"""Load user media (audio, image, video) into arrays the encoders accept, and save audio.

Every loader checks the path first and turns any decoding problem into a one-line
:class:`~m2ugen.errors.MediaError` that starts with the path and says what to do.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
import soundfile as sf
import soxr
from PIL import Image, ImageOps, UnidentifiedImageError

from m2ugen.checkpoint import atomic_path
from m2ugen.errors import MediaError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aiff", ".aif"}
)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# .mp4/.webm may be audio-only, but users almost always mean video by them.
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
_MODALITIES = (
    ("audio", AUDIO_EXTENSIONS),
    ("image", IMAGE_EXTENSIONS),
    ("video", VIDEO_EXTENSIONS),
)

_SUPPORTED_AUDIO = "wav, flac, ogg, mp3, m4a, mp4, webm"
_SUPPORTED_VIDEO = "mp4, mov, mkv, webm, avi"
_MAX_REASON_CHARS = 300


def _reason(e: BaseException) -> str:
    """One-line, bounded text of a library exception (decord's include C++ stack traces)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS] + "..."


_NATIVE_LOCK = threading.RLock()
_native_depth = 0  # nesting of native_quiet() (under the lock): only the outer one redirects
_MAX_CAPTURED = 64 * 1024


@contextmanager
def native_quiet() -> Iterator[None]:
    """Keep what native decoders print straight to file descriptor 2 (FFmpeg inside decord,
    mpg123 inside libsndfile, decord's own log) off the user's terminal, where it would sit
    beside our one-line error; it is logged at debug level (`m2ugen -v` shows it).

    fd 2 is process-wide, so a lock serialises the redirection between threads (the app).
    """
    global _native_depth
    with _NATIVE_LOCK:
        outer = _native_depth == 0
        _native_depth += 1
        try:
            saved = _redirect_stderr() if outer else None
            try:
                yield
            finally:
                if saved is not None:
                    _restore_stderr(*saved)
        finally:
            _native_depth -= 1


def _redirect_stderr() -> tuple[int, tempfile._TemporaryFileWrapper] | None:
    try:
        sys.stderr.flush()  # Python's own buffered text belongs on the terminal
    except (AttributeError, ValueError, OSError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (a daemon): nothing to protect
        return None
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    return saved, capture


def _restore_stderr(saved: int, capture: tempfile._TemporaryFileWrapper) -> None:
    os.dup2(saved, 2)
    os.close(saved)
    with capture:
        capture.seek(0)
        text = capture.read(_MAX_CAPTURED).decode("utf-8", "replace").strip()
    if text:
        log.debug("native decoder output: %s", " | ".join(text.splitlines()))


def _check_file(path: PathLike) -> Path:
    """Fail early with a clear message instead of a library's cryptic open error."""
    p = Path(path)
    if not p.exists():
        where = "" if p.is_absolute() else f" (relative to {Path.cwd()})"
        raise MediaError(f"{p}: file not found; check the path{where}")
    if p.is_dir():
        raise MediaError(f"{p}: is a directory, not a file; pass a media file inside it")
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: file is empty; re-export or re-download it")
    return p


def _too_long(p: Path, seconds: float, limit: float, kind: str) -> MediaError:
    return MediaError(
        f"{p}: {kind} is {seconds:.1f} s long, over the {limit:g} s limit; "
        "trim it or raise the limit"
    )


def guess_modality(path: PathLike) -> str:
    """Return "audio", "image" or "video" from the file extension (case-insensitive)."""
    ext = Path(path).suffix.lower()
    for name, exts in _MODALITIES:
        if ext in exts:
            return name
    accepted = ", ".join(sorted(AUDIO_EXTENSIONS | IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
    raise MediaError(f"{path}: unknown media extension {ext or '(none)'!r}; use one of {accepted}")


def _read_soundfile(p: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode with libsndfile -> ((frames, channels) float32, rate). Raises sf errors."""
    info = sf.info(str(p))
    if max_seconds is not None and info.frames / info.samplerate > max_seconds:
        raise _too_long(p, info.frames / info.samplerate, max_seconds, "audio")
    # The header can lie (e.g. MP3 frame counts are estimates), so read at most one
    # frame past the limit: enough to detect an over-long file without loading all of it.
    limit = -1 if max_seconds is None else int(max_seconds * info.samplerate) + 1
    data, rate = sf.read(str(p), frames=limit, dtype="float32", always_2d=True)
    if max_seconds is not None and data.shape[0] / rate > max_seconds:
        raise _too_long(p, data.shape[0] / rate, max_seconds, "audio")
    return data, rate


def _read_pyav(p: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with FFmpeg -> ((frames, channels) float32, rate)."""
    with av.open(str(p)) as container:
        if not container.streams.audio:
            raise MediaError(f"{p}: has no audio stream; pass a file that contains sound")
        stream = container.streams.audio[0]
        if max_seconds is not None and container.duration is not None:
            seconds = container.duration / av.time_base
            if seconds > max_seconds:
                raise _too_long(p, seconds, max_seconds, "audio")
        # Planar float keeps the file's layout and rate; we only want the sample format.
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        total = 0
        rate = stream.rate
        for frame in container.decode(stream):
            rate = frame.sample_rate
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                total += out.samples
            # The container duration may be missing; stop decoding once we know it is too long.
            if max_seconds is not None and total / rate > max_seconds:
                raise _too_long(p, total / rate, max_seconds, "audio")
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), rate


def _undecodable(p: Path, sf_err: Exception, av_err: Exception) -> MediaError:
    sf_reason = _reason(sf_err)
    if "does not exist" in sf_reason:  # libsndfile's words for data it cannot parse
        sf_reason = "format not recognised"
    return MediaError(
        f"{p}: cannot decode audio (soundfile: {sf_reason}; PyAV: {_reason(av_err)}); "
        f"supported: {_SUPPORTED_AUDIO}"
    )


def _decode_audio(p: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Try libsndfile (exact, fast), then FFmpeg for containers libsndfile cannot read."""
    try:
        return _read_soundfile(p, max_seconds)
    except sf.LibsndfileError as sf_err:
        try:
            return _read_pyav(p, max_seconds)
        except av.FFmpegError as av_err:
            raise _undecodable(p, sf_err, av_err) from av_err


def read_audio(path: PathLike, max_seconds: float | None = 600.0) -> tuple[np.ndarray, int]:
    """Decode an audio file at its own rate: (float32 mono waveform (samples,), rate).

    Channels are averaged. A file longer than `max_seconds` (None: no limit) raises
    MediaError rather than being silently cut. Lets a caller check a file before it knows
    the rate it needs (the CLI, before loading a model); `resample_audio` finishes the job.
    """
    p = _check_file(path)
    with native_quiet():
        data, rate = _decode_audio(p, max_seconds)
    if data.shape[0] == 0:
        raise MediaError(f"{p}: contains no audio samples; pass a non-empty recording")
    mono = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise MediaError(f"{p}: contains NaN or infinite samples; re-export it as PCM")
    return mono, rate


def resample_audio(mono: np.ndarray, rate: int, sr: int) -> np.ndarray:
    """A mono waveform at `rate` → float32 at `sr` (soxr HQ when the rates differ)."""
    if rate != sr:
        mono = soxr.resample(mono, rate, sr, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_audio(path: PathLike, sr: int, max_seconds: float | None = 600.0) -> np.ndarray:
    """Load an audio file as a float32 mono waveform of shape (samples,) at rate `sr`.

    Channels are averaged; the signal is resampled with soxr (HQ) if its rate differs.
    A file longer than `max_seconds` (None: no limit) raises MediaError rather than
    being silently cut.
    """
    return resample_audio(*read_audio(path, max_seconds), sr)


def audio_duration(path: PathLike) -> float:
    """Duration in seconds, from the header when possible (decodes only if it must)."""
    p = _check_file(path)
    with native_quiet():
        return _duration(p)


def _duration(p: Path) -> float:
    try:
        info = sf.info(str(p))
        return info.frames / info.samplerate
    except sf.LibsndfileError as sf_err:
        try:  # not a libsndfile format: ask FFmpeg's demuxer
            with av.open(str(p)) as container:
                if container.duration is not None:
                    return container.duration / av.time_base
        except av.FFmpegError as av_err:
            raise _undecodable(p, sf_err, av_err) from av_err
    data, rate = _decode_audio(p, None)  # the container does not store its duration
    return data.shape[0] / rate


def web_video_codec() -> str:
    """The encoder for the MP4s this project writes (synthetic data, demo media): H.264
    (libx264, in PyAV's wheels), which browsers play in the app's chat; MPEG-4 part 2
    where a PyAV build lacks it (Chromium shows no picture for those)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def save_audio(path: PathLike, waveform: np.ndarray, sr: int) -> None:
    """Write `waveform` ((samples,) or (samples, channels), in [-1, 1]) as 16-bit WAV.

    The file appears atomically: a reader never sees a half-written WAV, and a crash
    leaves the previous file intact.
    """
    p = Path(path)
    data = np.asarray(waveform, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise ValueError(f"waveform must be (samples,) or (samples, channels), got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("waveform contains NaN or infinite samples")
    data = np.clip(data, -1.0, 1.0)
    # Encoded in memory, then written by Python: a failed write (full disk, quota, file
    # size limit) is an OSError with its reason, where libsndfile only says "error 2".
    wav = io.BytesIO()
    sf.write(wav, data, sr, format="WAV", subtype="PCM_16")
    with atomic_path(p, suffix=".wav") as tmp:  # temp file beside it, fsync, rename
        try:
            tmp.write_bytes(wav.getbuffer())
        except OSError as e:  # named after the user's path, never the temporary one
            raise MediaError(f"{p}: cannot write the audio file ({e.strerror or e}); free some "
                             "disk space or choose another path") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent areas become white (not black)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        # PIL's own conversion clips 16-bit values at 255 instead of scaling (1000 -> white).
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def load_image(path: PathLike, max_pixels: int = 64_000_000) -> Image.Image:
    """Load an image as an RGB PIL image (size W x H), EXIF rotation applied.

    Images with more than `max_pixels` pixels are refused from their header, before
    any pixel is decoded, so a tiny "decompression bomb" cannot exhaust memory.
    """
    p = _check_file(path)
    try:
        # Locally, so PIL's bomb warning becomes an error for this call only.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise MediaError(
                        f"{p}: image is {width}x{height} = {width * height} pixels, over "
                        f"the {max_pixels} limit; downscale it or raise max_pixels"
                    )
                img.load()  # decode now, inside the try, so truncated files are caught
                ImageOps.exif_transpose(img, in_place=True)
                return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(
            f"{p}: image too large to decode safely ({_reason(e)}); downscale it"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated/corrupt data as OSError or SyntaxError (bad headers).
        accepted = ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
        raise MediaError(
            f"{p}: cannot decode image ({_reason(e)}); re-save it as one of {accepted}"
        ) from e


def _uniform_indices(n: int, num_frames: int) -> np.ndarray:
    """`num_frames` evenly spaced indices into n frames; repeats frames when n < num_frames."""
    return np.rint(np.linspace(0, n - 1, num_frames)).astype(np.int64)


def _video_decord(
    p: Path, num_frames: int, max_seconds: float | None, decord: ModuleType
) -> np.ndarray:
    reader = decord.VideoReader(str(p), ctx=decord.cpu(0))
    n = len(reader)
    fps = reader.get_avg_fps()
    if max_seconds is not None and fps > 0 and n / fps > max_seconds:
        raise _too_long(p, n / fps, max_seconds, "video")
    if n == 0:
        raise MediaError(f"{p}: has no video frames; pass a file with a video track")
    return reader.get_batch(_uniform_indices(n, num_frames).tolist()).asnumpy()


def _pyav_decode(p: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode frames in order, keeping those at `wanted` (rgb24, (H, W, 3)).

    Stops after the last wanted index; with `wanted` empty it decodes everything and
    the returned count is the exact number of frames.
    """
    picked: dict[int, np.ndarray] = {}
    last = max(wanted, default=-1)
    n = 0
    with av.open(str(p)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if n in wanted:
                picked[n] = frame.to_ndarray(format="rgb24")
            n += 1
            if wanted and n > last:
                break
    return picked, n


def _video_pyav(p: Path, num_frames: int, max_seconds: float | None) -> np.ndarray:
    with av.open(str(p)) as container:
        if not container.streams.video:
            raise MediaError(f"{p}: has no video stream (an audio-only file, or a video cut "
                             "short before its stream header); pass a complete video file")
        n = container.streams.video[0].frames  # 0 when the container does not store it
        if max_seconds is not None and container.duration is not None:
            seconds = container.duration / av.time_base
            if seconds > max_seconds:
                raise _too_long(p, seconds, max_seconds, "video")
    if n > 0:
        # Trust the stored count and decode once, only as far as the last index we need.
        wanted = set(_uniform_indices(n, num_frames).tolist())
        picked, decoded = _pyav_decode(p, wanted)
        if len(picked) == len(wanted):
            return np.stack([picked[i] for i in _uniform_indices(n, num_frames).tolist()])
        n = decoded  # the stream ended early, so the stored count was wrong; this one is exact
    else:
        # Count unknown: count by decoding without keeping frames (bounded memory), then pick.
        _, n = _pyav_decode(p, set())
    if n == 0:
        raise MediaError(f"{p}: has no video frames; pass a file with a video track")
    idx = _uniform_indices(n, num_frames)
    picked, _ = _pyav_decode(p, set(idx.tolist()))
    return np.stack([picked[i] for i in idx.tolist()])


def load_video(
    path: PathLike, num_frames: int = 32, max_seconds: float | None = 3600.0
) -> np.ndarray:
    """Sample `num_frames` uniformly spaced frames -> uint8 array (num_frames, H, W, 3).

    Clips shorter than `num_frames` are padded by repeating frames. decord is used when
    installed; PyAV (FFmpeg) otherwise, or when decord cannot read the file.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    p = _check_file(path)
    with native_quiet():
        return _decode_video(p, num_frames, max_seconds)


def _decode_video(p: Path, num_frames: int, max_seconds: float | None) -> np.ndarray:
    decord_reason = "decord: not installed"
    try:
        import decord  # lazily: no wheels on some platforms, and slow to import
    except ImportError:
        decord = None
    if decord is not None:
        try:
            return _video_decord(p, num_frames, max_seconds, decord)
        except (decord.DECORDError, RuntimeError, ValueError, IndexError) as e:
            # decord rejects files FFmpeg via PyAV can still read (e.g. odd streams).
            decord_reason = f"decord: {_reason(e)}"
    try:
        return _video_pyav(p, num_frames, max_seconds)
    except (av.FFmpegError, ValueError) as e:
        raise MediaError(
            f"{p}: cannot decode video ({decord_reason}; PyAV: {_reason(e)}); "
            f"supported: {_SUPPORTED_VIDEO}"
        ) from e


@dataclass(frozen=True)
class MediaSpec:
    """What a model's encoders take: audio at `sample_rate` Hz, videos as `num_frames`
    frames (`M2UGen.media_spec`). Images need nothing: the processor resizes them.

    The length limits (seconds; None: none) refuse longer files rather than cut them; a
    face narrows them with `dataclasses.replace` (the app: its upload limits).
    """

    sample_rate: int
    num_frames: int
    max_audio_seconds: float | None = 600.0
    max_video_seconds: float | None = 3600.0


def load_media(modality: str, source: Any, spec: MediaSpec) -> Any:
    """One entry for every face: a path (str or Path) is loaded the way `spec` asks for
    (audio resampled to the encoder's rate, `num_frames` video frames, RGB images, each
    within the spec's length limits); audio given as (waveform, its rate) is resampled; an
    already loaded value (waveform array at the spec's rate, PIL image, frame array) is
    returned as is."""
    if modality == "audio" and isinstance(source, tuple):
        wave, rate = source
        return resample_audio(np.asarray(wave, dtype=np.float32), int(rate), spec.sample_rate)
    if not isinstance(source, (str, os.PathLike)):
        return source
    if modality == "audio":
        return load_audio(source, sr=spec.sample_rate, max_seconds=spec.max_audio_seconds)
    if modality == "image":
        return load_image(source)
    if modality == "video":
        return load_video(source, num_frames=spec.num_frames,
                          max_seconds=spec.max_video_seconds)
    raise MediaError(f"{modality!r} is not a modality; use audio, image or video")


def load_attachment(modality: str, path: PathLike, spec: MediaSpec) -> Any:
    """A user's attachment decoded before the model loads (a bad file costs a second): as
    `load_media`, except audio, which stays at the recording's own rate as (waveform,
    rate) — the encoder resamples it, and a decoder that hears it (an edit) gets it whole."""
    if modality == "audio":
        return read_audio(path, max_seconds=spec.max_audio_seconds)
    return load_media(modality, path, spec)


def audio_source(source: Any, spec: MediaSpec) -> tuple[np.ndarray, int]:
    """Audio as a music decoder should hear it: (mono waveform, rate) at the recording's
    own rate for a path or a (waveform, rate) pair; a bare array is at the spec's rate."""
    if isinstance(source, tuple):
        wave, rate = source
        return np.asarray(wave, dtype=np.float32), int(rate)
    if isinstance(source, (str, os.PathLike)):
        return read_audio(source, max_seconds=spec.max_audio_seconds)
    return np.asarray(source, dtype=np.float32), spec.sample_rate
