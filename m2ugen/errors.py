"""Exceptions for mistakes a user can make (bad file, path, config, record), and the
checks every face shares to raise them: option values (`check_number`, `check_seed`),
devices (`check_device`), damaged components (`loading`, `nonfinite_weights`).

The CLI prints these on one line and exits with code 2; the app shows them in the
chat. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
import numbers
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

if TYPE_CHECKING:
    import torch

# Seeds feed torch.Generator.manual_seed (64 bits); one bound for every face keeps them
# portable between the CLI, the app and training configs.
MAX_SEED = 2**63 - 1


class M2UGenError(Exception):
    """Base class: a user-caused problem whose message names the culprit and the fix."""


class MediaError(M2UGenError):
    """An audio, image or video file that cannot be used (missing, corrupt, empty, ...)."""


class ConfigError(M2UGenError):
    """A bad model directory, preset name, config file or option value."""


class ChatError(M2UGenError):
    """A chat request that cannot be served (e.g. the prompt does not fit the context)."""


@contextmanager
def loading(what: str, ref: str, remote_code_fix: str = "use a checkpoint whose config "
            "names a transformers class") -> Iterator[None]:
    """Turn a component that cannot be found or fetched, a refused pickle or refused
    remote code into a one-line ConfigError (`remote_code_fix`: what to do then)."""
    try:
        yield
    except OSError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if Path(ref).is_dir():  # a local component: nothing to log in to or download
            raise ConfigError(
                f"{what} {ref!r} could not be loaded ({reason}); the component directory is "
                f"damaged or incomplete: {_REBUILD}") from e
        raise ConfigError(
            f"{what} {ref!r} could not be loaded ({reason}); check the hub id or path, run "
            "`huggingface-cli login` for gated models such as LLaMA-2, and unset "
            "HF_HUB_OFFLINE to download") from e
    except SafetensorError as e:  # a truncated or overwritten weight file
        raise ConfigError(f"{damaged_weights(ref, e)}; it belongs to the {what}: "
                          f"{_REBUILD}") from e
    except RuntimeError as e:
        # transformers' only word for weights whose shapes contradict config.json; any
        # other RuntimeError is a bug and keeps its traceback
        if "ignore_mismatched_sizes" not in str(e):
            raise
        raise ConfigError(f"{what} {ref!r}: its weight shapes do not match its config.json "
                          "(a weight file or the config was replaced or damaged): "
                          f"{_REBUILD}") from e
    except pickle.UnpicklingError as e:  # a component's pytorch_model.bin that holds code
        files = pickle_files(ref)
        raise ConfigError(refused_message(files[0] if len(files) == 1 else f"{what} {ref}",
                                          e)) from e
    except ValueError as e:
        # transformers refusing a config's auto_map (custom code) has no exception class of
        # its own; its message always names the trust_remote_code switch
        if "trust_remote_code" not in str(e):
            raise
        raise ConfigError(f"{what} {ref!r} needs Python code shipped with the model (its "
                          "config names a module of its own: an auto_map or a custom "
                          f"component), which was not run; {remote_code_fix}") from e


# ---- damaged components -------------------------------------------------------------
_REBUILD = ("re-download it or copy it again (a tiny preset: delete its directory to have it "
            "rebuilt, or run `m2ugen make-tiny DIR`)")


def _local_dir(ref: str) -> Path | None:
    """The directory holding a component: the path itself or its hub-cache snapshot."""
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):  # not cached, not a repo id
        return None


def damaged_weights(ref: str, error: Exception) -> str:
    """'FILE: damaged safetensors file (reason)' for the first unreadable weight file of the
    component at `ref` (the libraries' error does not name the file)."""
    from safetensors import safe_open

    reason = " ".join(str(error).split()) or type(error).__name__
    where = _local_dir(ref)
    for f in sorted(where.rglob("*.safetensors")) if where is not None else []:
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            return f"{f}: damaged safetensors file ({' '.join(str(e).split())})"
    return f"{ref}: a weight file is damaged ({reason})"


def nonfinite_weights(where: str, named: Iterator[tuple[str, torch.Tensor]],
                      fix: str = _REBUILD) -> None:
    """ConfigError naming the first tensor holding NaN or ±inf: a damaged weight file
    (it would otherwise surface as NaN logits or a sampling crash much later)."""
    import torch

    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            located = _locate_nonfinite(where) or f"{where}: tensor {name}"
            raise ConfigError(f"{located} holds NaN or infinite values; the weights are "
                              f"damaged: {fix}")


def _locate_nonfinite(where: str) -> str | None:
    """'FILE: tensor KEY' for the first non-finite tensor in the weight files at `where`
    (a file or a component), named as in the file rather than as the loaded module calls
    it. Runs only on the error path: it reads every tensor."""
    import torch
    from safetensors import safe_open

    root = Path(where) if Path(where).is_file() else _local_dir(where)
    files = [root] if root is not None and root.is_file() else (
        sorted(root.rglob("*.safetensors")) if root is not None else [])
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for key in h.keys():  # noqa: SIM118 (safe_open is not a mapping)
                t = h.get_tensor(key)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"{f}: tensor {key}"
    return None


# ---- option values ---------------------------------------------------------------------
def check_number(value: Any, name: str, *, integer: bool = False, minimum: float | None = None,
                 maximum: float | None = None, above: float | None = None,
                 error: type[M2UGenError] = ConfigError) -> Any:
    """`value` if it is a finite number in range (an int when `integer`), else `error`
    naming the option as the user wrote it (`name`: `--top-p`, `top_p`, `Top-p`).

    Every face (CLI, YAML, the app's API) goes through here, so NaN, ±inf, booleans,
    strings and out-of-range values get the same one-line answer. `above` is an exclusive
    lower bound; NaN fails every comparison, so it is tested explicitly.
    """
    bounds = []
    if above is not None:
        bounds.append(f"> {above:g}")
    if minimum is not None:
        bounds.append(f">= {minimum:g}" if isinstance(minimum, float) else f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}" if isinstance(maximum, float) else f"<= {maximum}")
    want = ("an integer" if integer else "a finite number") + (
        " " + " and ".join(bounds) if bounds else "")
    shown = repr(value)
    if len(shown) > 40:  # a 400-digit seed: enough to recognise it
        shown = f"{shown[:24]}... ({len(shown)} characters)"
    bad = error(f"{name} must be {want}, got {shown}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond float range: finite but out of any bound we set
        as_float = math.inf if value > 0 else -math.inf
    if integer:
        if isinstance(value, numbers.Integral):
            value = int(value)
        elif math.isfinite(as_float) and as_float.is_integer():
            value = int(as_float)  # 128.0 from a slider
        else:
            raise bad
    elif not math.isfinite(as_float):
        raise bad
    else:
        value = as_float
    if ((above is not None and not value > above)
            or (minimum is not None and not value >= minimum)
            or (maximum is not None and not value <= maximum)):
        raise bad
    return value


def check_seed(value: Any, name: str, error: type[M2UGenError] = ConfigError) -> int:
    """A seed: an integer in [0, 2**63 - 1]."""
    return check_number(value, name, integer=True, minimum=0, maximum=MAX_SEED, error=error)


def check_device(device: Any, name: str = "device") -> torch.device:
    """A torch device this machine has: cpu, cuda, cuda:N (N < the GPU count) or mps."""
    import torch

    text = str(device)
    cpu = f"{name} cpu" if name.startswith("--") else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ConfigError(f"{name} {text!r} is not a device; use cpu, cuda or cuda:N") from e
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{name} {text}: torch sees no CUDA GPU on this machine; use "
                              f"{cpu} or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{name} {text}: this machine has {count} CUDA GPU(s), "
                              f"cuda:0 to cuda:{count - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{name} {text}: this machine has no Apple GPU; use {cpu}")
        return dev
    raise ConfigError(f"{name} {text!r}: m2ugen runs on cpu, cuda, cuda:N or mps")


# ---- refused pickles ---------------------------------------------------------------
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


def pickle_files(directory: str | Path) -> list[Path]:
    """The pickle-format weight files of a component directory (to name in an error)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES)
