"""m2ugen: a multimodal music understanding and generation assistant.

    from m2ugen import M2UGen, ChatSession
    chat = ChatSession(M2UGen.from_pretrained("tiny"))

The model-level names are imported on first use (PEP 562), so `import m2ugen` and the
command line stay fast and importing an error class never loads torch.
"""

import logging
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



def _drop_import_notes(record: logging.LogRecord) -> bool:
    """False for the notes torchao (used by --quantize, imported by transformers whenever it
    is installed) logs on every import with a CPU-only torch: its CUDA extensions do not
    load, there is no Triton (weight-only int8 needs neither), and torch finds its Enum
    registrations outdated; diffusers finds torchao 0.18 without the tensor classes it
    removed. Nothing for a user to fix."""
    message = str(record.msg)
    return not ((message.startswith("Failed to load ") and "torchao" in message)
                or "Detected no triton" in message
                or "Unable to import `torchao` Tensor objects" in message
                or "is an Enum subclass and is now natively supported" in message)


for _name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree",
              "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).addFilter(_drop_import_notes)

__all__ = ["ChatError", "ConfigError", "M2UGenError", "MediaError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'm2ugen' has no attribute {name!r}")
