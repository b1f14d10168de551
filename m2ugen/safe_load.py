"""Reading torch pickles (`.pt`, `.pth`, `.bin`) without running anything they contain.

A torch checkpoint is a pickle, and unpickling can call any function the file names.
Every read goes through `torch.load(weights_only=True)`, whose unpickler rebuilds only
tensors and plain containers; `allow` adds the few harmless classes a known file format
needs (the published `checkpoint.pth` carries an `argparse.Namespace`). A refused file is
a one-line ConfigError naming the file and what it tried to rebuild.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from m2ugen.errors import ConfigError

# the global torch's unpickler refused, as its messages spell it (torch 2.6 … 2.13)
_GLOBAL = re.compile(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)")
_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", re.DOTALL)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refusal(error: pickle.UnpicklingError) -> str:
    """Why torch refused a pickle, in a few words (its own message spans many lines)."""
    text = str(error)
    found = _GLOBAL.search(text)
    if found:
        return f"it asks to rebuild {found.group(1)}, which is not a tensor or plain data"
    found = _DETAIL.search(text)
    detail = " ".join(found.group(1).split())[:200] if found else "not a torch.save file"
    return f"torch's restricted unpickler refused it: {detail}"


def refused_message(path: str | Path, error: pickle.UnpicklingError) -> str:
    """One line: which file, what it tried, that nothing ran, and what to do instead."""
    return (f"{path}: refused to unpickle ({refusal(error)}); m2ugen loads .pt/.pth/.bin "
            "files with torch.load(weights_only=True) and ran nothing from it: use a "
            "safetensors copy, or re-save the tensors with torch.save(state_dict) if you "
            "made the file yourself")


def load_weights_only(path: str | Path, allow: Sequence[type] = ()) -> Any:
    """`torch.load` of a local file on the CPU, tensors and plain data only.

    Zip-format files (every `torch.save` since 1.6) are memory-mapped, so nothing is read
    until used; older formats are read whole through the same restricted unpickler.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give the checkpoint file itself")
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint file not found")
    try:
        mmap = zipfile.is_zipfile(path)
        with torch.serialization.safe_globals(list(allow)), warnings.catch_warnings():
            # a raw pickle's protocol warning would print beside our one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise ConfigError(refused_message(path, e)) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{path}: cannot be read as a torch checkpoint ({reason}); the "
                          "file is damaged or not a torch.save file") from e


def pickle_files(directory: str | Path) -> list[Path]:
    """The pickle-format weight files of a component directory (to name in an error)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES)
