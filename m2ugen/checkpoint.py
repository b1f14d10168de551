"""Model-directory files: atomic writes, the trained-tensor file, and writing model
directories without touching what is not ours (DESIGN.md §3, §7).

`adapter.safetensors` holds ONLY the tensors M2UGen trains (adapters, prefix queries,
gates, LoRA, biases, norms, new-token rows, projector), under stable names that do not
depend on peft's wrapper prefixes. `model_directory` writes a whole model directory: a new
one appears with one rename; in an existing one only the names we wrote (the
`.m2ugen-files` manifest) are replaced, so the user's own files there are never deleted
or moved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from m2ugen.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_NAME = "m2ugen.json"  # the model directory's config
TRAINED_NAME = "adapter.safetensors"
STATE_DIR = "trainer_state"  # a training run's resume state (m2ugen/train_state.py)
MANIFEST = ".m2ugen-files"  # the names we wrote into a model directory, one JSON list
_BUILD = ".m2ugen-build-"  # temporaries carry our pid: `{prefix}{pid}-{random}`
_OLD = ".m2ugen-old-"
# what a model directory written before the manifest existed holds of ours
_LEGACY_OWNED = (CONFIG_NAME, TRAINED_NAME, "tokenizer")
_TINY_PARTS = ("llm", "mert", "vit", "vivit", "musicgen", "audioldm2")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`.

    The fsync comes before the rename: renamed first, a crash could leave `path` naming a
    file whose data never reached the disk. Errors name `path`, never the temp name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=suffix + ".tmp")
    except OSError as e:
        raise _file_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600 (and writers may recreate the file)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as e:
        if not (_concerns(e, tmp_path) or _concerns(e, path)):
            raise
        raise _file_error(path, e) from e
    finally:
        tmp_path.unlink(missing_ok=True)


def _file_error(path: Path, e: OSError) -> ConfigError:
    return ConfigError(f"{path}: cannot be written ({_reason(e)}); check the path, its "
                       "permissions and the free space, or choose another")


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous CPU copies)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (memory-mapped); a damaged file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: not a readable safetensors file ({e}); re-save it") from e


def check_output_dir(path: str | Path, force: bool = False) -> set[str]:
    """Refuse an output that is not ours to write; returns the names of ours already in it.

    Ours: a model directory we wrote (`m2ugen.json`, or the `.m2ugen-files` manifest left by
    an interrupted replacement). A directory holding a training run (`trainer_state/`) is
    the trainer's; an existing file, a broken link and any other non-empty directory are
    the user's. `force` allows the last and the training run: only our names are written.
    Nothing is changed here, so commands call it before any slow work.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{path}: is a broken symbolic link; remove it or choose another "
                          "output directory")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is a file, not a directory; a model is written as a "
                          "directory: choose a new path (the file was left untouched)")
    try:
        if not path.exists() or not _user_entries(path):
            return set()
        owned = _owned(path)
    except OSError as e:
        raise _write_error(path, e) from e
    if (path / STATE_DIR).is_dir() and not force:
        raise ConfigError(f"{path}: holds a training run ({STATE_DIR}/); choose another output "
                          "directory, or pass --force to replace only its model files")
    if owned is None:
        if not force:
            raise ConfigError(f"{path}: is not empty and is not an m2ugen model directory (no "
                              f"{CONFIG_NAME}); choose a new or empty directory, or pass --force "
                              "to write the model files beside what is there")
        return set()
    return owned


@contextmanager
def model_directory(path: str | Path, force: bool = False,
                    commit: str = CONFIG_NAME) -> Iterator[Path]:
    """Yield an empty build directory; when the block succeeds its entries become `path`'s.

    A new `path` appears whole with one rename. An existing one (see `check_output_dir`)
    keeps every entry that is not ours; ours are replaced entry by entry, with `commit`
    (the file loaders look for: `m2ugen.json`) taken out first and put back last, so an
    interrupted replacement never loads as a mix of two models, and the manifest (written
    first, naming old and new entries) keeps the directory ours for the next write, which
    finishes the cleanup.
    A failed block changes nothing; a failed replacement is rolled back.
    """
    path = Path(path)
    owned = check_output_dir(path, force)
    _recover_legacy(path)
    if path.exists() and not owned:  # a legacy `.old` copy may have come back
        owned = check_output_dir(path, force)
    fresh = not path.exists()
    where = path.parent if fresh else path
    prefix = f".{path.name}{_BUILD}" if fresh else _BUILD
    try:
        _clean_stale(path)
        where.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(dir=where, prefix=f"{prefix}{os.getpid()}-"))
        os.chmod(build, 0o755)  # mkdtemp makes 0700
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        try:
            yield build
        except OSError as e:  # a write into the build directory: name the user's path
            if not _concerns(e, build):
                raise
            raise _write_error(path, e) from e
        names = sorted(n for n in os.listdir(build) if n != MANIFEST)
        if fresh:
            (build / MANIFEST).write_text(json.dumps(names) + "\n", encoding="utf-8")
            _fsync_tree(build)
            os.rename(build, path)
            fsync_dir(path.parent)
        else:
            _fsync_tree(build)
            _replace_entries(path, build, names, owned, commit)
    except OSError as e:  # committing: every path involved is the output's
        raise _write_error(path, e) from e
    finally:
        if build.exists():
            shutil.rmtree(build)


def _user_entries(path: Path) -> list[str]:
    return [n for n in os.listdir(path) if not n.startswith((_BUILD, _OLD))]


def _owned(path: Path) -> set[str] | None:
    """Our names in `path` (None: not ours). Only plain names: a manifest cannot point out."""
    names: set[str] = set()
    if (path / MANIFEST).is_file():
        try:
            listed = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            listed = []  # damaged: fall back on what m2ugen.json says
        if isinstance(listed, list):
            names = {n for n in listed if isinstance(n, str) and n not in ("", ".", "..")
                     and n == Path(n).name}
        names.add(MANIFEST)
    elif not (path / CONFIG_NAME).is_file():
        return None
    names.update(_LEGACY_OWNED)
    try:
        extra = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8")).get("extra")
    except (OSError, ValueError, AttributeError):
        extra = None
    if isinstance(extra, dict) and "tiny_version" in extra:  # the tiny preset holds its parts
        names.update(_TINY_PARTS)
    return {n for n in names if os.path.lexists(path / n)}


def _replace_entries(path: Path, build: Path, names: list[str], owned: set[str],
                     commit: str) -> None:
    """Move `build`'s entries into `path` over ours, drop our stale ones; roll back on error.

    An entry of the user's under a name the model needs (a `tokenizer` folder in a
    directory written with --force) is refused before anything moves: replacing it would
    delete the user's data."""
    clash = sorted(n for n in names if n not in owned and os.path.lexists(path / n))
    if clash:
        raise ConfigError(f"{path / clash[0]}: is not m2ugen's, and the model needs that name "
                          "(it was left untouched); move it away or choose another directory")
    manifest = path / MANIFEST
    before = manifest.read_text(encoding="utf-8") if manifest.is_file() else None
    atomic_write_text(manifest, json.dumps(sorted(owned | set(names))) + "\n")
    trash = Path(tempfile.mkdtemp(dir=path, prefix=f"{_OLD}{os.getpid()}-"))
    moved: list[tuple[Path, Path]] = []

    def move(src: Path, dst: Path) -> None:
        os.rename(src, dst)
        moved.append((src, dst))

    try:
        order = [commit] if commit in owned else []  # unloadable from here on
        order += [n for n in sorted(owned - set(names)) if n not in (commit, MANIFEST)]
        order += [n for n in names if n in owned and n != commit]
        for name in order:  # ours out of the way: replaced ones and stale ones
            move(path / name, trash / name)
        for name in sorted(names, key=lambda n: n == commit):  # the commit file last
            move(build / name, path / name)
        fsync_dir(path)
    except BaseException:
        try:
            for src, dst in reversed(moved):
                os.rename(dst, src)
        except OSError as e:  # the previous files must not be lost: say where they are
            raise ConfigError(f"{path}: replacing the model failed and could not be undone "
                              f"({e.strerror or e}); the previous files are in {trash}") from e
        if before is None:
            manifest.unlink()
        else:
            atomic_write_text(manifest, before)
        shutil.rmtree(trash)
        raise
    atomic_write_text(manifest, json.dumps(names) + "\n")
    shutil.rmtree(trash)


def _clean_stale(path: Path) -> None:
    """Remove temporaries that crashed writers left in and beside `path`."""
    places = [(path.parent, f".{path.name}{_BUILD}")]
    if path.is_dir():
        places += [(path, _BUILD), (path, _OLD)]
    for where, prefix in places:
        if not where.is_dir():
            continue
        for name in os.listdir(where):
            if name.startswith(prefix) and not _alive(name[len(prefix):].split("-")[0]):
                _remove(where / name)
    if path.is_dir():
        for name in os.listdir(path):  # atomic_path leftovers of our files
            if name.endswith(".tmp") and name.startswith(
                    tuple(f".{o}." for o in (*_LEGACY_OWNED, MANIFEST))):
                _remove(path / name)
    legacy_tmp = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")
    if path.parent.is_dir():  # the whole-directory swap of earlier versions
        for name in os.listdir(path.parent):
            if legacy_tmp.match(name):
                _remove(path.parent / name)


def _recover_legacy(path: Path) -> None:
    """Earlier versions swapped whole directories with two renames; a crash between them
    left the previous copy at `.NAME.old-PID`. Put it back (or drop it if `path` is whole)."""
    if not path.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.old-(\d+)$")
    for name in sorted(os.listdir(path.parent)):
        m = pattern.match(name)
        if m is None or _alive(m.group(1)):
            continue
        if os.path.lexists(path):
            _remove(path.parent / name)
        else:
            log.warning("%s: restoring the copy an interrupted write left at %s", path, name)
            os.rename(path.parent / name, path)


def _alive(pid: str) -> bool:
    """Whether the writer whose pid a temporary's name carries is still running."""
    if not pid.isdigit() or int(pid) == os.getpid():  # ours: from a dead namesake process
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _fsync_tree(root: Path) -> None:
    """Make a built directory durable before it is renamed into place."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def _concerns(e: OSError, root: Path) -> bool:
    return any(isinstance(f, str) and f.startswith(str(root)) for f in (e.filename, e.filename2))


def _write_error(path: Path, e: OSError) -> ConfigError:
    """A one-line error naming the user's path, not our temporary one."""
    return ConfigError(f"{path}: cannot write the model directory ({_reason(e)}); check the "
                       "path, its permissions and the free space, or choose another")


def _reason(e: OSError) -> str:
    if isinstance(e, (FileExistsError, NotADirectoryError)):  # mkdir under a file
        return "a part of the path is a file, not a directory"
    return e.strerror or str(e)


# what `fingerprint` gave every folder whose weights sit in subfolders (a diffusers
# pipeline's) before it looked into them: it records nothing
EMPTY_FINGERPRINT = hashlib.sha1().hexdigest()[:20]


def stored_parameters(directory: str | Path) -> int:
    """Parameters in the safetensors files under `directory`, read from their headers (no
    weight is loaded); 0 when it is not a local directory or holds none. A damaged file
    counts nothing here: loading it names the damage (`load_tensors`, the loaders)."""
    total = 0
    directory = Path(directory)
    for f in sorted(directory.rglob("*.safetensors")) if directory.is_dir() else []:
        try:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= f.stat().st_size - 8:  # an empty or garbage file
                    continue
                header = json.loads(fh.read(size))
            total += sum(math.prod(v["shape"]) for k, v in header.items()
                         if k != "__metadata__")
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
    return total


def fingerprint(directory: str | Path) -> str | None:
    """A cheap identity of a local component's weights: configs plus the header, middle and
    end of every weight file, subfolders included (a diffusers pipeline keeps its weights
    in unet/, vae/, …) — enough to tell two different initialisations or checkpoints apart
    without reading gigabytes. None when `directory` is not a local directory."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    h = hashlib.sha1()
    files = sorted(directory.rglob("*.safetensors")) + sorted(directory.rglob("*.bin")) + \
        sorted(directory.rglob("config.json"))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(directory).as_posix()}:{size}".encode())
        with open(f, "rb") as fh:
            for offset in (0, size // 2, max(0, size - 65536)):
                fh.seek(offset)
                h.update(fh.read(65536))
    return h.hexdigest()[:20]
