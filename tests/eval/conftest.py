"""Fixtures of the evaluation tests: the tiny embedding models and a small synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def eval_models(ckpts):
    """The tiny evaluation models (built once into the session's private ckpts/)."""
    from m2ugen.eval.config import resolve_eval_models

    return resolve_eval_models("tiny")


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """`m2ugen synth-data` output: 6 clips (2 edits), 2 images, 2 videos."""
    from m2ugen.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, seed=0, n_audio=6, n_images=2, n_videos=2)
    return out
