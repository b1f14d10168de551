"""datasets_gen.common.embed: MUEdit's music embeddings from an m2ugen model's MERT or from
a MERT checkpoint directly (the path m-a-p/MERT-v1-330M takes), on the tiny stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # datasets_gen lives beside the m2ugen package, not inside it
    sys.path.insert(0, str(ROOT))

from datasets_gen.common import synthetic  # noqa: E402
from datasets_gen.common.embed import MusicEmbedder  # noqa: E402
from m2ugen.media import load_audio  # noqa: E402


def test_music_embedder_takes_a_mert_directory_or_an_m2ugen_model(tmp_path):
    clips = synthetic.write_audio(tmp_path / "audio", 2)
    m2ugen = synthetic.build_tiny_music_captioner(tmp_path / "m2ugen")
    by_model = MusicEmbedder(str(m2ugen), "cpu")
    by_mert = MusicEmbedder(str(m2ugen / "mert"), "cpu", layer=1)  # a MERT checkpoint itself
    wavs = [load_audio(p, by_model.sample_rate) for p in clips]
    mean, one = by_model(wavs), by_mert(wavs)
    assert mean.shape == one.shape == (2, 32)
    assert np.allclose(by_model.encoder(wavs).float().numpy()[:, 1], one, atol=1e-5)
    assert not np.allclose(mean, one)
