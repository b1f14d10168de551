"""m2ugen: a multimodal music understanding and generation assistant.

    from m2ugen import M2UGen, ChatSession
    chat = ChatSession(M2UGen.from_pretrained("tiny"))

The model-level names are imported on first use (PEP 562), so `import m2ugen` and the
command line stay fast and importing an error class never loads torch.
"""

from importlib import import_module
from typing import Any

from m2ugen.errors import ChatError, ConfigError, M2UGenError, MediaError

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "M2UGen": "m2ugen.model",
    "ChatSession": "m2ugen.chat",
    "ChatResult": "m2ugen.chat",
    "GenerationSettings": "m2ugen.generate",
    "MusicSettings": "m2ugen.music",
    "MusicResult": "m2ugen.music",
    "M2UGenConfig": "m2ugen.config",
    "load_audio": "m2ugen.media",
    "load_image": "m2ugen.media",
    "load_video": "m2ugen.media",
    "save_audio": "m2ugen.media",
}

__all__ = ["ChatError", "ConfigError", "M2UGenError", "MediaError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'm2ugen' has no attribute {name!r}")
