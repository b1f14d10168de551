"""The small demo media the app shows as examples, generated here (nothing is downloaded).

- piano_120bpm.wav: a C-major arpeggio of decaying piano-like tones at 120 BPM, 6 s, 24 kHz
- drums_90bpm.wav:  kick, snare and hi-hat at 90 BPM, 6 s, 24 kHz
- sunset.png:       an orange sun over a purple sea, 256 × 192
- shapes.mp4:       a red circle moving across a blue background, 2 s, 16 fps
- synth_*.wav/png/mp4: held-out synthetic media (`m2ugen synth-data` with seed 1, not the
  seed the tiny-trained preset learned from): a piano, a strings and a drums clip, an
  image and a video, asked about by the app's examples for that preset

`m2ugen app --examples-dir DIR` writes them into DIR when it does not exist yet;
`examples/make_examples.py` (the Makefile's `examples` target) writes them into
examples/media.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from m2ugen.data.synth import synthesize
from m2ugen.media import web_video_codec

SR = 24000
HELD_OUT_SEED = 1  # the synthetic examples' seed; the tiny-trained preset learned seed 0
# example name → the file `m2ugen synth-data --seed 1` writes (clip i plays INSTRUMENTS[i % 5])
SYNTH_FILES = {"synth_piano.wav": "audio/clip_000.wav", "synth_strings.wav": "audio/clip_002.wav",
               "synth_drums.wav": "audio/clip_004.wav", "synth_shape.png": "images/image_000.png",
               "synth_motion.mp4": "videos/video_000.mp4"}
NAMES = ("piano_120bpm.wav", "drums_90bpm.wav", "sunset.png", "shapes.mp4", *SYNTH_FILES)


def piano(seconds: float = 6.0, bpm: int = 120) -> np.ndarray:
    beat = 60.0 / bpm
    notes = [261.63, 329.63, 392.00, 523.25]  # C4 E4 G4 C5
    out = np.zeros(int(seconds * SR), dtype=np.float32)
    t = np.arange(int(beat * SR)) / SR
    for k in range(int(seconds / beat)):
        f = notes[k % len(notes)]
        tone = sum(np.sin(2 * np.pi * f * h * t) / h for h in (1, 2, 3)) * np.exp(-3 * t)
        start = int(k * beat * SR)
        out[start:start + len(t)] += 0.3 * tone[: len(out) - start].astype(np.float32)
    return out


def drums(seconds: float = 6.0, bpm: int = 90, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    step = 60.0 / bpm / 2  # eighth notes
    out = np.zeros(int(seconds * SR), dtype=np.float32)
    t = np.arange(int(0.2 * SR)) / SR
    kick = np.sin(2 * np.pi * (60 + 60 * np.exp(-20 * t)) * t) * np.exp(-12 * t)
    snare = rng.standard_normal(len(t)) * np.exp(-20 * t) * 0.5
    hat = rng.standard_normal(len(t)) * np.exp(-80 * t) * 0.2
    for k in range(int(seconds / step)):
        start = int(k * step * SR)
        n = min(len(t), len(out) - start)
        hit = hat + (kick if k % 4 == 0 else snare if k % 4 == 2 else 0)
        out[start:start + n] += 0.5 * hit[:n].astype(np.float32)
    return np.clip(out, -1, 1)


def sunset() -> Image.Image:
    img = Image.new("RGB", (256, 192), (40, 20, 70))
    draw = ImageDraw.Draw(img)
    for y in range(96):
        draw.line([(0, y), (256, y)], fill=(250 - y, 120 + y // 2, 60 + y))
    draw.ellipse([98, 50, 158, 110], fill=(255, 140, 0))
    return img


def shapes_video(path: Path, seconds: float = 2.0, fps: int = 16) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(web_video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.thread_count = 1  # the same bytes every time
        for i in range(int(seconds * fps)):
            img = Image.new("RGB", (128, 96), (20, 40, 200))
            x = int(i * 96 / (seconds * fps))
            ImageDraw.Draw(img).ellipse([x, 30, x + 32, 62], fill=(230, 20, 20))
            frame = av.VideoFrame.from_image(img)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)



def make_examples(out_dir: str | Path) -> list[Path]:
    """Write the demo media into `out_dir` (created if needed); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / name for name in NAMES]
    sf.write(files[0], piano(), SR)
    sf.write(files[1], drums(), SR)
    sunset().save(files[2])
    shapes_video(files[3])
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), seed=HELD_OUT_SEED, n_audio=5, n_images=1, n_videos=1)
        for name, src in SYNTH_FILES.items():
            shutil.copyfile(Path(tmp) / src, out / name)
    return files
