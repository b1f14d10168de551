"""M2UGenConfig: what a model directory is made of, as one JSON file (`m2ugen.json`).

Every component is named by a Hugging Face hub id or by a path. A relative path is
resolved against the model directory that holds the config, so a directory can carry
local copies of its components (the tiny preset carries all of them).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2ugen.checkpoint import CONFIG_NAME, atomic_write_text
from m2ugen.errors import ConfigError

FORMAT_VERSION = 1
# the input modalities, in injection order (Q prompt layers each: audio, image, video)
MODALITIES = ("audio", "image", "video")

# ORIGINAL_M2UGEN.md §2: Alpaca style; the response follows "### Response:" directly.
PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

DECODER_KINDS = ("musicgen", "audioldm2")


@dataclass
class M2UGenConfig:
    """Components, dimensions and hyper-parameters of one M2UGen model.

    Token counts are what the frozen encoders emit per input: MERT gives one vector per
    hidden state (layers + embeddings), ViT and ViViT give their `last_hidden_state`
    rows. They size the Conv1d of each understanding adapter and are checked against the
    loaded encoders.
    """

    name: str = "custom"
    # components: hub id or path (relative paths are relative to the model directory)
    llm: str = "meta-llama/Llama-2-7b-hf"
    tokenizer: str = "meta-llama/Llama-2-7b-hf"
    mert: str = "m-a-p/MERT-v1-330M"
    vit: str = "google/vit-base-patch16-224"
    vivit: str = "google/vivit-b-16x2-kinetics400"
    decoder: str = "musicgen"
    decoder_path: str = "facebook/musicgen-small"
    # dimensions
    llm_dim: int = 4096
    mert_layers: int = 25  # hidden states = transformer layers + embeddings
    mert_dim: int = 1024
    vit_tokens: int = 197
    vit_dim: int = 768
    vivit_tokens: int = 3137
    vivit_dim: int = 768
    video_frames: int = 32
    mert_chunk_seconds: float = 60.0
    # LLM tuning and injection
    num_audio_tokens: int = 8
    query_layers: int = 6  # Q: each modality owns Q of the top 3Q layers
    lora_rank: int = 16
    lora_alpha: int = 16  # alpha == rank: LoRA scale 1, as published
    # base-vocabulary rows whose embedding / output rows are trained too (the published
    # release trained the whole embedding; the converter keeps the rows that changed)
    extra_token_rows: list[int] = field(default_factory=list)
    adapter_blocks: int = 3
    adapter_norm: str = "rmsnorm"  # "layernorm" = the published "legacy" variant
    adapter_norm_eps: float = 1e-6
    # output projector: N tokens × width of the decoder's conditioning (ORIGINAL §4)
    projector_tokens: int = 128
    projector_dim: int = 768
    projector_width: int = 512  # published: nn.Transformer(512, 4 heads, 4+4 layers, ffn 2048)
    projector_heads: int = 4
    projector_layers: int = 4
    projector_ffn: int = 2048
    # chat
    max_context: int = 1024
    prompt_template: str = PROMPT_TEMPLATE
    format_version: int = FORMAT_VERSION
    # identities of the local base components the trained tensors were made on (written with
    # the model directory; a mismatch at load time is reported)
    base_fingerprints: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on values no model can be built from."""
        if self.decoder not in DECODER_KINDS:
            raise ConfigError(
                f"decoder kind {self.decoder!r} is unknown; use one of {', '.join(DECODER_KINDS)}"
            )
        if self.adapter_norm not in ("rmsnorm", "layernorm"):
            raise ConfigError(f"adapter_norm {self.adapter_norm!r}: use 'rmsnorm' or 'layernorm'")
        if "{instruction}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain the placeholder {instruction}")
        for name in ("num_audio_tokens", "query_layers", "lora_rank", "llm_dim", "max_context",
                     "mert_layers", "mert_dim", "vit_tokens", "vit_dim", "vivit_tokens",
                     "vivit_dim", "video_frames", "projector_tokens", "projector_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"format_version {self.format_version} is newer than this m2ugen understands "
                f"({FORMAT_VERSION}); upgrade m2ugen"
            )

    @property
    def injected_layers(self) -> int:
        """Number of top LLM layers that receive a prompt vector (3 modalities × Q)."""
        return 3 * self.query_layers

    @property
    def audio_tokens(self) -> list[str]:
        return [f"[AUD{i}]" for i in range(self.num_audio_tokens)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> M2UGenConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown keys {', '.join(unknown)}; remove them or upgrade m2ugen"
            )
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from e

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> M2UGenConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(
                f"{path}: not found; a model directory needs {CONFIG_NAME} "
                "(make one with `m2ugen make-tiny DIR` or name a preset)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: invalid JSON ({e}); fix or regenerate the file") from e
        return cls.from_dict(data, source=str(path))


def resolve_component(value: str, base: Path | None) -> str:
    """A component reference as `from_pretrained` wants it.

    Relative paths that exist under the model directory win over hub ids, so a local
    copy is always used when present.
    """
    if base is not None:
        local = base / value
        if local.exists():
            return str(local)
    return value
