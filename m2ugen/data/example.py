"""One training example, whatever format it came from (ORIGINAL_M2UGEN.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Example:
    """A prompt/response pair with its media.

    Attributes:
        instruction: the user's text ("" for stage-1 captioning).
        response: the supervised answer text, WITHOUT the [AUD] tokens.
        history: earlier (user, assistant) turns of a multi-turn conversation.
        audio / image / video: input media files (absolute paths) or None.
        music_caption: when the answer is music, the caption of that music: the response
            then ends with the [AUD] tokens and the projector regresses 10 × the decoder's
            conditioning of this caption.
        music_file: that music itself (instruct records' `output_file`, absolute), when the
            record names one: the reference an evaluation compares generated music with.
        source: "<spec file>#<index>" for error messages.
    """

    instruction: str
    response: str
    history: list[tuple[str, str]] = field(default_factory=list)
    audio: Path | None = None
    image: Path | None = None
    video: Path | None = None
    music_caption: str | None = None
    music_file: Path | None = None
    source: str = ""

    @property
    def media(self) -> dict[str, Path]:
        return {k: v for k, v in (("audio", self.audio), ("image", self.image),
                                  ("video", self.video)) if v is not None}
