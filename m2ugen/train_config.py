"""Training configuration: a YAML file plus `key=value` overrides from the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from m2ugen.errors import ConfigError


@dataclass
class TrainConfig:
    """One stage's settings (configs/stageN.yaml documents each)."""

    stage: int = 1
    model: str = "tiny"  # preset, base model directory, or the previous stage's output
    # "standard": start the trained tensors from the standard inits (zero gates, zero
    # LoRA B) as when training from a base model; "keep": continue from the model's own
    init_trained: str = "keep"
    data: str = "data/synth/dataset.yaml"  # dataset spec (m2ugen/data/spec.py)
    out: str = "runs/stage1"
    max_steps: int = 100
    batch_size: int = 4  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_steps: int = 10
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip: float = 1.0
    max_len: int = 512
    group_by_length: bool = False
    seed: int = 0
    log_every: int = 1
    save_every: int = 50
    num_workers: int = 0
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (CPU always fp32)
    device: str = "auto"
    # dtype of adapter.safetensors (trainer_state/ always keeps fp32 for exact resume);
    # bf16 halves a 7B model directory (2.0 → 1.0 GiB)
    save_dtype: str = "fp32"
    feature_cache: str | None = None  # directory written by `m2ugen cache-features`
    skip_bad: bool = False
    # stop this run after N optimizer steps (checkpointing first), as a time-boxed or
    # preempted job would; `--resume` continues to max_steps
    stop_after: int | None = None
    progress: bool = True
    tensorboard: bool = True

    def validate(self) -> None:
        if self.stage not in (1, 2, 3):
            raise ConfigError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "max_len", "log_every",
                     "save_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got "
                                  f"{getattr(self, name)!r}")
        if self.save_dtype not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"save_dtype {self.save_dtype!r}: use fp32, bf16 or fp16")
        if self.init_trained not in ("keep", "standard"):
            raise ConfigError(f"init_trained {self.init_trained!r}: use keep or standard")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"precision {self.precision!r}: use auto, bf16, fp16 or fp32")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ConfigError(f"warmup_steps must be in [0, max_steps], got {self.warmup_steps}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, "
                              f"min_lr={self.min_lr})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      ) -> TrainConfig:
    """Read a stage YAML and apply `key=value` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: training config not found; see configs/stage1.yaml")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: write key=value, e.g. max_steps=200")
        data[key.strip()] = _parse_value(value)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path or 'overrides'}: unknown settings {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        cfg = TrainConfig(**data)
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from e
    for key in ("lr", "min_lr", "weight_decay", "clip"):  # YAML reads 1e-4 as a string
        try:
            setattr(cfg, key, float(getattr(cfg, key)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key} must be a number, got {getattr(cfg, key)!r}") from e
    cfg.validate()
    return cfg
