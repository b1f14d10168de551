"""The `tiny-trained` preset: built on first use into `<ckpts>/tiny-trained`, like `tiny`.

Its recipe trains (m2ugen/training/tiny_trained.py), and training sits above the model in
the import order (DESIGN.md §2), which sits above presets: so the preset runs the build
as its own command, `m2ugen make-tiny DIR --trained`, in a child process of the same
Python, whose progress bars and status lines go to this process's stderr.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.errors import ConfigError

log = logging.getLogger(__name__)

TINY_TRAINED_VERSION = 8  # bump when the recipe changes: stale directories get rebuilt
# v7 measured 8 min 26 s on 2 idle CPU cores (the build uses one torch thread;
# training/build.json has each step's time); v4 took 20.8 min with one core busy
BUILD_MINUTES = 10


def is_current_tiny_trained(path: Path) -> bool:
    try:
        cfg = json.loads((path / "m2ugen.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return cfg.get("extra", {}).get("tiny_trained_version") == TINY_TRAINED_VERSION and \
        (path / TRAINED_NAME).is_file()


def ensure_tiny_trained(path: Path, seed: int = 0) -> Path:
    """Return `path`, building the tiny-trained preset there first if missing or stale."""
    if is_current_tiny_trained(path):
        return path
    if path.exists():
        log.info("%s is an outdated tiny-trained preset; rebuilding", path)
    log.warning("building the tiny-trained preset into %s (first use, offline, about %d "
                "minutes on 2 CPU cores): synthetic data, a small LLaMA pretrained on its "
                "text, then training stages 1-3", path, BUILD_MINUTES)
    package_root = str(Path(__file__).resolve().parents[2])  # holds the m2ugen package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH"))
                                        if p)
    done = subprocess.run([sys.executable, "-m", "m2ugen.cli", "make-tiny", str(path),
                           "--trained", "--seed", str(seed)], env=env, check=False)
    if done.returncode != 0 or not is_current_tiny_trained(path):
        raise ConfigError(f"building the tiny-trained preset into {path} failed (exit code "
                          f"{done.returncode}; its messages are above); run `m2ugen make-tiny "
                          f"{path} --trained -v` to see them again")
    return path
