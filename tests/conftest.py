"""Shared fixtures: the tiny preset is built once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core:
    # one torch thread each, or two workers' kernels fight over the same cores
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> Path:
    """A private ckpts/ for the session: `--model tiny` resolves here, never to the repo."""
    path = tmp_path_factory.mktemp("ckpts")
    os.environ["M2UGEN_CKPTS"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(ckpts) -> Path:
    from m2ugen.model import M2UGen
    from m2ugen.presets import tiny_dir as preset_dir
    from m2ugen.presets.tiny import ensure_tiny

    return ensure_tiny(preset_dir("musicgen"), model_cls=M2UGen)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from m2ugen.model import M2UGen

    return M2UGen.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def media_arrays(tiny_model):
    """Raw inputs as the loaders return them, sized for the tiny encoders."""
    rng = np.random.default_rng(0)
    sr = tiny_model.encoders["audio"].sample_rate
    t = np.arange(2 * sr) / sr
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    frames = tiny_model.encoders["video"].num_frames
    video = rng.integers(0, 256, (frames, 40, 50, 3), dtype=np.uint8)
    return {"audio": audio, "image": image, "video": video}


@pytest.fixture(scope="session")
def tiny_audioldm2_dir(ckpts) -> Path:
    from m2ugen.model import M2UGen
    from m2ugen.presets import tiny_dir as preset_dir
    from m2ugen.presets.tiny import ensure_tiny

    return ensure_tiny(preset_dir("audioldm2"), decoder="audioldm2", model_cls=M2UGen)


@pytest.fixture(scope="session")
def tiny_audioldm2_model(tiny_audioldm2_dir):
    from m2ugen.model import M2UGen

    return M2UGen.from_pretrained(tiny_audioldm2_dir)


@pytest.fixture(scope="session", params=["musicgen", "audioldm2"])
def any_tiny_model(request):
    """The tiny model with each decoder."""
    name = "tiny_model" if request.param == "musicgen" else "tiny_audioldm2_model"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Path:
    """The app's example media (m2ugen.examples, as `make examples` writes) in a temp dir."""
    from m2ugen.examples import make_examples

    out = tmp_path_factory.mktemp("media")
    make_examples(out)
    return out


@pytest.fixture(scope="module")
def gradio_app():
    """The root launcher `gradio_app.py` as a module (its `main(argv)` is the face under test)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "gradio_app.py"
    spec = importlib.util.spec_from_file_location("gradio_app_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def lockstep():
    """`lockstep(job)` runs `job(0, step)` and `job(1, step)` in two threads whose
    `step()` calls pair up (each waits for the other), so two generations interleave one
    step against the other; returns both results and re-raises a thread's failure.
    `job(i, None)` is the same job run alone."""
    import threading

    def run(job):
        barrier = threading.Barrier(2)

        def step() -> None:
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass  # the other job ended first

        out: list = [None, None]
        errors: list = []

        def worker(i: int) -> None:
            try:
                out[i] = job(i, step)
            except Exception as e:  # reported below: a thread's exception would vanish
                errors.append(e)
            finally:
                barrier.abort()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        return out

    return run
