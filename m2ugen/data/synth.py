"""A small synthetic dataset in every published format, whose captions are true.

Audio is synthesised with numpy (24 kHz, 2–4 s): notes on every beat of a stated tempo,
in a stated key, on a stated timbre (piano: decaying harmonics, organ: sustained odd
harmonics, strings: vibrato saw, bass: low sine, drums: kick/snare/hat over a bass
pulse). Images are PIL shapes in stated colours; videos are moving shapes (PyAV, H.264).
Questions, edits and instructions are built from those facts, so a model trained on
them can be checked. Same seed -> byte-identical JSON and WAV files.

    m2ugen synth-data data/synth    # then train with data/synth/dataset.yaml
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from m2ugen.checkpoint import atomic_path, atomic_write_text
from m2ugen.errors import ConfigError
from m2ugen.media import save_audio, web_video_codec

SR = 24_000
MAX_ITEMS = 10_000  # per kind, for `m2ugen synth-data`: a sample dataset, not a corpus
INSTRUMENTS = ("piano", "organ", "strings", "bass", "drums")
_LABEL = {"drums": "drums and bass"}  # what captions call an instrument (default: its name)
_PHRASE = {"piano": "piano arpeggio", "organ": "organ chord progression",
           "strings": "string melody", "bass": "bass line", "drums": "drum and bass groove"}
TEMPOS = (80, 90, 100, 110, 120, 128, 140)
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_SCALE = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 210),
    "yellow": (240, 210, 30), "purple": (130, 50, 170), "orange": (245, 130, 20),
    "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"from left to right": (1, 0), "from right to left": (-1, 0),
              "upward": (0, -1), "downward": (0, 1)}
_IMAGE_SIZE, _VIDEO_SIZE, _VIDEO_FPS = 96, 64, 8


def _sentence(text: str) -> str:
    """The text with its first letter upper-cased."""
    return text[0].upper() + text[1:]


def _a(word: str) -> str:
    """`word` with its indefinite article: "a red", "an orange"."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:]


@dataclass(frozen=True)
class Clip:
    """The facts of one synthetic music clip; the caption states all of them."""

    file: str
    instrument: str
    bpm: int
    tonic: int  # semitone above C
    mode: str  # "major" | "minor"

    @property
    def label(self) -> str:
        return _LABEL.get(self.instrument, self.instrument)

    @property
    def key(self) -> str:
        return f"{NOTE_NAMES[self.tonic]} {self.mode}"

    @property
    def seconds(self) -> float:
        """Eight beats, clamped to 2–4 s."""
        return min(4.0, max(2.0, 8 * 60.0 / self.bpm))

    @property
    def caption(self) -> str:
        mood = "calm" if self.bpm <= 90 else "steady" if self.bpm <= 110 else "energetic"
        return _sentence(f"{_a(mood)} {_PHRASE[self.instrument]} in {self.key} "
                         f"at {self.bpm} BPM.")


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _env(n: int, attack: float, decay: float | None, release: float = 0.02) -> np.ndarray:
    """Linear attack, then exponential decay (rate 1/s) or a flat sustain; short release."""
    t = np.arange(n) / SR
    env = np.minimum(1.0, t / attack) if attack > 0 else np.ones(n)
    if decay is not None:
        env = env * np.exp(-decay * t)
    r = min(n, int(release * SR))
    env[n - r:] *= np.linspace(1.0, 0.0, r)
    return env


def _tone(midi: float, n: int, harmonics: dict[int, float], vibrato: float = 0.0
          ) -> np.ndarray:
    """Sum of sine harmonics {k: amplitude}; `vibrato` in semitones at 5.5 Hz."""
    t = np.arange(n) / SR
    phase = 2 * np.pi * _hz(midi) * t
    if vibrato:
        depth = _hz(midi) * (2 ** (vibrato / 12) - 1)
        phase = phase + depth / 5.5 * np.sin(2 * np.pi * 5.5 * t)
    return sum(a * np.sin(k * phase) for k, a in harmonics.items())


def _drum(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "kick":  # pitch sweep 110 -> 45 Hz
        t = np.arange(int(0.3 * SR)) / SR
        f = 45 + 65 * np.exp(-30 * t)
        return np.sin(2 * np.pi * np.cumsum(f) / SR) * np.exp(-12 * t)
    if kind == "snare":
        t = np.arange(int(0.2 * SR)) / SR
        body = 0.4 * np.sin(2 * np.pi * 190 * t) * np.exp(-20 * t)
        return 0.8 * (0.6 * rng.standard_normal(t.size) * np.exp(-25 * t) + body)
    t = np.arange(int(0.05 * SR)) / SR  # hat: high-passed noise, quiet (off-beats)
    return 0.25 * np.diff(rng.standard_normal(t.size + 1)) / 2 * np.exp(-60 * t)


def render_clip(clip: Clip, seed: int) -> np.ndarray:
    """The clip's waveform: float32 (samples,) at `SR`, peak 0.8, a note on every beat."""
    rng = np.random.default_rng([seed, 7, clip.tonic, clip.bpm])
    n, beat = int(clip.seconds * SR), 60.0 / clip.bpm
    out = np.zeros(n)
    third = 4 if clip.mode == "major" else 3
    scale = _SCALE[clip.mode]
    root = 60 + clip.tonic  # C4..B4

    def add(start: float, wave: np.ndarray) -> None:
        s = int(round(start * SR))
        m = min(wave.size, n - s)
        out[s:s + m] += wave[:m]

    for b in range(int(np.ceil(clip.seconds / beat))):
        start = b * beat
        if clip.instrument == "piano":  # one arpeggio note per beat, ringing 1.5 beats
            m = int(1.5 * beat * SR)
            midi = root + (0, third, 7, 12)[b % 4]
            add(start, _tone(midi, m, {k: 1 / k for k in range(1, 7)}) * _env(m, 0.005, 3.0))
        elif clip.instrument == "organ":  # sustained triads, re-struck every beat: I IV V I
            m = int(0.85 * beat * SR)  # detached, so each beat starts audibly
            deg = (0, 5, 7, 0)[(b // 2) % 4]
            for iv in (0, third, 7):  # I, IV, V share the key's third (natural minor)
                wave = _tone(root - 12 + deg + iv, m, {1: 1, 3: 1 / 3, 5: 1 / 5, 7: 1 / 7})
                add(start, 0.4 * wave * _env(m, 0.01, None, release=0.06))
        elif clip.instrument == "strings":  # a scale walk, vibrato saw, soft attack
            m = int(beat * SR)
            midi = root + scale[(0, 2, 4, 2, 1, 3, 4, 0)[b % 8]]
            saw = _tone(midi, m, {k: 1 / k for k in range(1, 9)}, vibrato=0.3)
            add(start, saw * _env(m, 0.06, 1.0))
        else:  # bass, or drums over a bass pulse
            m = int(beat * SR)
            midi = root - 24 + (0 if b % 2 == 0 else 7)
            gain = 1.0 if clip.instrument == "bass" else 0.4
            add(start, gain * _tone(midi, m, {1: 1, 2: 0.3}) * _env(m, 0.005, 4.0))
            if clip.instrument == "drums":
                add(start, _drum("kick" if b % 2 == 0 else "snare", rng))
                add(start + beat / 2, _drum("hat", rng))
    return (0.8 * out / np.abs(out).max()).astype(np.float32)


def _json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _clips(seed: int, n: int) -> list[Clip]:
    rng = np.random.default_rng([seed, 1])
    return [Clip(file=f"clip_{i:03d}.wav", instrument=INSTRUMENTS[i % len(INSTRUMENTS)],
                 bpm=int(rng.choice(TEMPOS)), tonic=int(rng.integers(12)),
                 mode=("major", "minor")[int(rng.integers(2))]) for i in range(n)]


def _edit(clip: Clip, i: int, rng: np.random.Generator) -> tuple[Clip, str]:
    """An edited version of `clip` (instrument, tempo or both) and the instruction."""
    kind = ("both", "instrument", "tempo")[i % 3]
    other = [x for x in INSTRUMENTS if x != clip.instrument]
    new = replace(clip, file=f"edit_{i:03d}.wav")
    parts = []
    if kind in ("both", "instrument"):
        new = replace(new, instrument=str(rng.choice(other)))
        parts.append(f"replace the {clip.label} with {new.label}")
    if kind in ("both", "tempo"):
        new = replace(new, bpm=int(rng.choice([b for b in TEMPOS if b != clip.bpm])))
        verb = "speed it up" if new.bpm > clip.bpm else "slow it down"
        parts.append(f"{verb} to {new.bpm} BPM")
    return new, _sentence(" and ".join(parts)) + "."


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
           fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def _colours(rng: np.random.Generator) -> tuple[str, str]:
    fg, bg = rng.choice(len(COLOURS), size=2, replace=False)
    names = list(COLOURS)
    return names[int(fg)], names[int(bg)]


def _write_image(path: Path, rng: np.random.Generator) -> tuple[str, str, str]:
    """Draw one shape; return (colour, shape, background colour)."""
    colour, bg = _colours(rng)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    side = int(rng.integers(40, 60))
    x, y = (int(v) for v in rng.integers(4, _IMAGE_SIZE - side - 4, size=2))
    img = Image.new("RGB", (_IMAGE_SIZE, _IMAGE_SIZE), COLOURS[bg])
    _shape(ImageDraw.Draw(img), shape, (x, y, x + side, y + side), COLOURS[colour])
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return colour, shape, bg


def _write_video(path: Path, rng: np.random.Generator) -> str:
    """Write a clip of one shape crossing the frame; return its caption."""
    colour, bg = _colours(rng)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
    dx, dy = DIRECTIONS[direction]
    frames, side = int(rng.integers(8, 17)), 18
    lo, hi = 4, _VIDEO_SIZE - side - 4
    with atomic_path(path, suffix=".mp4") as tmp, av.open(str(tmp), "w", format="mp4") as box:
        stream = box.add_stream(web_video_codec(), rate=_VIDEO_FPS)
        stream.width = stream.height = _VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1  # deterministic output
        for f in range(frames):
            pos = lo + (hi - lo) * f / (frames - 1)
            x = int(round(pos if dx > 0 else hi + lo - pos if dx < 0 else (lo + hi) / 2))
            y = int(round(pos if dy > 0 else hi + lo - pos if dy < 0 else (lo + hi) / 2))
            img = Image.new("RGB", (_VIDEO_SIZE, _VIDEO_SIZE), COLOURS[bg])
            _shape(ImageDraw.Draw(img), shape, (x, y, x + side, y + side), COLOURS[colour])
            box.mux(stream.encode(av.VideoFrame.from_image(img)))
        box.mux(stream.encode(None))
    return _sentence(f"{_a(colour)} {shape} moving {direction} on {_a(bg)} background.")


_QUESTIONS = (
    ("What instrument is playing in this music?", lambda c: f"It is played on {c.label}."),
    ("What is the tempo of this piece?", lambda c: f"The tempo is {c.bpm} BPM."),
    ("What key is this music in?", lambda c: f"It is in {c.key}."),
    ("Describe this music.", lambda c: c.caption),
)
_ALPACA: tuple[dict[str, Any], ...] = (
    {"instruction": "What does BPM stand for?", "input": "",
     "output": "Beats per minute: how many beats fall in one minute, which sets the tempo."},
    {"instruction": "How long is one beat at the given tempo?", "input": "120 BPM",
     "output": "Half a second, since 60 / 120 = 0.5 s."},
    {"instruction": "Name the notes of the given chord.", "input": "A minor triad",
     "output": "A, C and E."},
    {"instruction": "What is the relative minor of C major?", "input": "",
     "output": "A minor: it uses the same seven notes as C major."},
    {"instruction": "Which tempo is faster, 90 BPM or 140 BPM?", "input": "",
     "output": "140 BPM is faster."},
    {"conversation": [
        {"from": "human", "value": "What is an arpeggio?"},
        {"from": "gpt", "value": "The notes of a chord played one after another."},
        {"from": "human", "value": "Which instrument often plays them?"},
        {"from": "gpt", "value": "The piano, although any pitched instrument can."}]},
)
_MAKE = ("Compose music that fits this {0}.", "Generate a piece of music inspired by this {0}.",
         "Make music for this {0}.")

SPEC_TEMPLATE = """\
# Synthetic m2ugen dataset (seed {seed}), written by `m2ugen synth-data`.
# Dataset spec format: m2ugen/data/spec.py; paths are relative to this file.
stage1:
  - {{format: mucaps, file: mucaps.json, root: audio}}
  - {{format: image_captions, file: image_captions.json, root: images}}
  - {{format: video_captions, file: video_captions.json, root: videos}}
stage2:
  - {{format: mucaps, file: mucaps.json, root: audio}}
stage3:
  - {{format: musicqa, file: musicqa.json, root: audio}}
  - {{format: alpaca, file: alpaca.json}}
  - {{format: instruct, file: muimage.json, input_root: images, output_root: audio}}
  - {{format: instruct, file: muvideo.json, input_root: videos, output_root: audio}}
  - {{format: instruct, file: muedit.json, input_root: audio, output_root: audio_edit}}
"""
# what synthesize writes at the top of `out` (an earlier run's are rewritten; a user's are not)
WRITES = ("dataset.yaml", "audio", "audio_edit", "images", "videos", "mucaps.json",
          "image_captions.json", "video_captions.json", "musicqa.json", "alpaca.json",
          "muimage.json", "muvideo.json", "muedit.json")


def check_out(out: Path) -> None:
    """ConfigError when `out` holds files of the user's that synthesize would overwrite (a
    directory an earlier `m2ugen synth-data` wrote is rewritten)."""
    spec = out / "dataset.yaml"
    head = SPEC_TEMPLATE.split("(", 1)[0]
    if spec.is_file() and spec.read_bytes().startswith(head.encode()):
        return
    taken = [name for name in WRITES if (out / name).exists()] if out.is_dir() else []
    if taken:
        raise ConfigError(f"{out / taken[0]}: already there, and {out} is not a dataset "
                          "`m2ugen synth-data` wrote; it would be overwritten: choose a new or "
                          "empty directory")


def _instruct(input_file: str, request: str, input_caption: str, modality: str,
              output: Clip, answer: str) -> dict[str, Any]:
    return {"input_file": input_file, "output_file": output.file, "conversation": [
        {"from": "human", "value": request, "input_modality": modality,
         "caption": input_caption},
        {"from": "gpt", "value": answer, "caption": output.caption, "output_modality": "audio"},
    ]}


def synthesize(out: Path, seed: int = 0, n_audio: int = 12, n_images: int = 6,
               n_videos: int = 4) -> tuple[Path, dict[str, int]]:
    """Write the dataset; return (path of dataset.yaml, records per JSON file)."""
    for name, n in (("n_audio", n_audio), ("n_images", n_images), ("n_videos", n_videos)):
        if n < 1:
            raise ConfigError(f"{name}={n} (--{name.replace('_', '-')}): the synthetic "
                              "dataset needs at least one of each kind")
    out = Path(out)
    clips = _clips(seed, n_audio)
    for clip in clips:
        save_audio(out / "audio" / clip.file, render_clip(clip, seed), SR)
    edit_rng = np.random.default_rng([seed, 2])
    edits = [(clip, *_edit(clip, i, edit_rng))
             for i, clip in enumerate(clips[: max(1, n_audio // 3)])]
    for _, new, _ in edits:
        save_audio(out / "audio_edit" / new.file, render_clip(new, seed), SR)

    images, coco = [], {"images": [], "annotations": []}
    for i in range(n_images):
        name = f"image_{i:03d}.png"
        colour, shape, bg = _write_image(out / "images" / name,
                                         np.random.default_rng([seed, 3, i]))
        caption = _sentence(f"{_a(colour)} {shape} on {_a(bg)} background.")
        images.append((name, caption))
        coco["images"].append({"id": i, "file_name": name})
        for text in (caption, f"A picture of {_a(colour)} {shape} with {_a(bg)} background."):
            coco["annotations"].append({"image_id": i, "caption": text})
    videos = []
    for i in range(n_videos):
        name = f"video_{i:03d}.mp4"
        videos.append((name, _write_video(out / "videos" / name,
                                          np.random.default_rng([seed, 4, i]))))

    qa_rng = np.random.default_rng([seed, 5])
    musicqa = []
    for clip in clips:
        picks = qa_rng.permutation(len(_QUESTIONS))[: 2 + int(qa_rng.integers(2))]
        conv = []
        for q in picks:
            question, answer = _QUESTIONS[int(q)]
            conv += [{"from": "human", "value": question},
                     {"from": "gpt", "value": answer(clip)}]
        musicqa.append({"audio_name": clip.file, "conversation": conv})

    def made(files: list[tuple[str, str]], what: str, modality: str) -> list[dict[str, Any]]:
        return [_instruct(name, _MAKE[i % len(_MAKE)].format(what), caption, modality,
                          clips[i % n_audio], "Here is a piece that fits it: "
                          + _lower_first(clips[i % n_audio].caption))
                for i, (name, caption) in enumerate(files)]

    files: dict[str, Any] = {
        "mucaps": {c.file: c.caption for c in clips},
        "image_captions": coco,
        "video_captions": dict(videos),
        "musicqa": musicqa,
        "alpaca": _ALPACA,
        "muimage": made(images, "image", "image"),
        "muvideo": made(videos, "video", "video"),
        "muedit": [_instruct(old.file, instruction, old.caption, "audio", new,
                             "Here is the edited music: " + _lower_first(new.caption))
                   for old, new, instruction in edits],
    }
    for name, obj in files.items():
        _json(out / f"{name}.json", obj)
    spec = out / "dataset.yaml"
    atomic_write_text(spec, SPEC_TEMPLATE.format(seed=seed))
    counts = {k: len(v["annotations"] if k == "image_captions" else v) for k, v in files.items()}
    return spec, counts


def write_synthetic_dataset(out: Path, seed: int = 0, n_audio: int = 12, n_images: int = 6,
                            n_videos: int = 4) -> Path:
    """Write a small dataset in every format under `out`; return `out/dataset.yaml`."""
    return synthesize(out, seed=seed, n_audio=n_audio, n_images=n_images,
                      n_videos=n_videos)[0]
