"""m2ugen: a multimodal music understanding and generation assistant."""

from m2ugen.errors import ChatError, ConfigError, M2UGenError, MediaError

__version__ = "0.1.0"

__all__ = ["ChatError", "ConfigError", "M2UGenError", "MediaError", "__version__"]
