"""m2ugen.examples: the demo media, generated (nothing downloaded), and the checkout's
`examples/make_examples.py` (the Makefile's `examples` target) that writes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from m2ugen.app import EXAMPLES, SYNTH_EXAMPLES
from m2ugen.examples import NAMES, SR, make_examples
from m2ugen.media import load_image, load_video

REPO = Path(__file__).resolve().parent.parent


def test_make_examples_writes_media_that_load(tmp_path):
    files = make_examples(tmp_path / "new" / "media")  # parents are created
    assert [f.name for f in files] == list(NAMES)
    assert sorted(p.name for p in (tmp_path / "new" / "media").iterdir()) == sorted(NAMES)
    piano, drums, picture, video = files[:4]
    for wav in (piano, drums):
        info = sf.info(str(wav))
        assert (info.samplerate, info.frames) == (SR, 6 * SR)
    assert load_image(picture).size == (256, 192)
    assert load_video(video, num_frames=4).shape == (4, 96, 128, 3)
    with av.open(str(video)) as box:  # H.264: the browser's player shows it in the chat
        assert box.streams.video[0].codec_context.name == "h264"
    # same bytes every time: the examples are a fixed demo, not noise
    again = make_examples(tmp_path / "again")
    assert np.array_equal(sf.read(again[0])[0], sf.read(piano)[0])
    # every example the app offers names a file written here
    assert {name for _, name in (*EXAMPLES, *SYNTH_EXAMPLES) if name} <= set(NAMES)


def test_the_checkout_script_writes_them(tmp_path):
    out = tmp_path / "media"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "make_examples.py"),
                           str(out)], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout == f"wrote example media to {out}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
