"""Reading torch pickles (`.pt`, `.pth`, `.bin`) without running anything they contain.

A torch checkpoint is a pickle, and unpickling can call any function the file names.
Every read goes through `torch.load(weights_only=True)`, whose unpickler rebuilds only
tensors and plain containers; `allow` adds the few harmless classes a known file format
needs (the published `checkpoint.pth` carries an `argparse.Namespace`). A refused file is
a one-line ConfigError naming the file and what it tried to rebuild.
"""

from __future__ import annotations

import pickle
import struct
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from m2ugen.errors import ConfigError, refused_message


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
    # what the unpickler raises on bytes that are no pickle at all (a truncated or random
    # file): each one byte away from another, so all are one 'damaged' answer
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError,
            struct.error) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{path}: cannot be read as a torch checkpoint ({reason}); the "
                          "file is damaged or not a torch.save file") from e
