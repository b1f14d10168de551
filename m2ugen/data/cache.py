"""Feature cache: frozen-encoder features and decoder targets, computed once.

Shards are safetensors files written atomically; `index.json` (also atomic) maps each key
to its shard, so an interrupted `m2ugen cache-features` resumes where it stopped. Keys
hash what the value depends on: the file's resolved path, size and mtime plus the
encoder, or the caption plus the decoder and TARGET_FORMAT — a component named by where
it is and, when local, by its weights' fingerprint (`component_id`), so a folder
overwritten with other weights gets new keys instead of stale values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from m2ugen.checkpoint import atomic_write_text, fingerprint, save_tensors
from m2ugen.config import resolve_component
from m2ugen.errors import ConfigError

INDEX = "index.json"
# bump when a decoder's `target()` changes for the same caption and weights (2: zero
# padding is part of the target's meaning; AudioLDM2 encodes each caption alone)
TARGET_FORMAT = 2


def component_id(ref: str, base: Path | None) -> str:
    """A component as cached values depend on it: where it resolves to and, for a local
    folder, its weights' fingerprint (a hub id stands for itself)."""
    where = resolve_component(ref, base)
    return f"{where}|{fingerprint(where) or ''}"


def media_key(path: Path, modality: str, encoder: str) -> str:
    st = path.stat()
    text = f"{modality}|{encoder}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{modality}-" + hashlib.sha1(text.encode()).hexdigest()


def caption_key(caption: str, decoder: str) -> str:
    text = f"{decoder}|v{TARGET_FORMAT}|{caption}"
    return "target-" + hashlib.sha1(text.encode()).hexdigest()


class FeatureCache:
    """Read and append cached tensors under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.index: dict[str, str] = {}
        path = self.root / INDEX
        if path.is_file():
            try:
                self.index = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: damaged cache index ({e}); delete the cache "
                                  "directory and run `m2ugen cache-features` again") from e
        self._pending: dict[str, torch.Tensor] = {}
        self._handles: dict[str, object] = {}

    def __contains__(self, key: str | None) -> bool:
        return key is not None and (key in self.index or key in self._pending)

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> torch.Tensor:
        if key in self._pending:
            return self._pending[key]
        shard = self.index[key]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / shard), framework="pt")
        return self._handles[shard].get_tensor(key)

    def add(self, key: str, tensor: torch.Tensor) -> None:
        self._pending[key] = tensor.detach().to("cpu").contiguous()

    def flush(self) -> None:
        """Write pending tensors as a new shard, then the index (both atomically)."""
        if not self._pending:
            return
        n = len({v for v in self.index.values()})
        shard = f"shard-{n:05d}.safetensors"
        while (self.root / shard).exists():
            n += 1
            shard = f"shard-{n:05d}.safetensors"
        save_tensors(self.root / shard, self._pending)
        for key in self._pending:
            self.index[key] = shard
        atomic_write_text(self.root / INDEX, json.dumps(self.index, sort_keys=True))
        self._pending = {}

