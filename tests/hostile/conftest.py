"""Fixtures shared by the hostile-input suite."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gradio_app():
    """The root launcher `gradio_app.py` as a module (its `main(argv)` is the face under test)."""
    spec = importlib.util.spec_from_file_location("gradio_app_under_test",
                                                  REPO / "gradio_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
