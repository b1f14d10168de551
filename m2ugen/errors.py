"""Exceptions for mistakes a user can make (bad file, path, config, record).

The CLI prints these on one line and exits with code 2; the app shows them in the
chat. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class M2UGenError(Exception):
    """Base class: a user-caused problem whose message names the culprit and the fix."""


class MediaError(M2UGenError):
    """An audio, image or video file that cannot be used (missing, corrupt, empty, ...)."""


class ConfigError(M2UGenError):
    """A bad model directory, preset name, config file or option value."""


class ChatError(M2UGenError):
    """A chat request that cannot be served (e.g. the prompt does not fit the context)."""
