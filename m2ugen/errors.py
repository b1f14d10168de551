"""Exceptions for mistakes a user can make (bad file, path, config, record).

The CLI prints these on one line and exits with code 2; the app shows them in the
chat. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class M2UGenError(Exception):
    """Base class: a user-caused problem whose message names the culprit and the fix."""


class MediaError(M2UGenError):
    """An audio, image or video file that cannot be used (missing, corrupt, empty, ...)."""


class ConfigError(M2UGenError):
    """A bad model directory, preset name, config file or option value."""


class ChatError(M2UGenError):
    """A chat request that cannot be served (e.g. the prompt does not fit the context)."""


@contextmanager
def loading(what: str, ref: str) -> Iterator[None]:
    """Turn a component that cannot be found or fetched into a one-line ConfigError."""
    try:
        yield
    except OSError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"{what} {ref!r} could not be loaded ({reason}); check the hub id or path, run "
            "`huggingface-cli login` for gated models such as LLaMA-2, and unset "
            "HF_HUB_OFFLINE to download") from e
