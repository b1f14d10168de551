"""Training configuration: a YAML file plus `key=value` overrides from the command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from m2ugen.errors import ConfigError, check_device, check_number, check_seed
from m2ugen.trained import GROUP_PATTERNS, stage_groups


@dataclass
class RunConfig:
    """The settings every trainer here shares (the stages' TrainConfig and the decoder
    fine-tune's DecoderTrainConfig add their own): data, output, schedule, optimizer,
    precision, ranks, checkpoints, logging."""

    model: str = "tiny"  # preset, base model directory, or the previous stage's output
    data: str = "data/synth/dataset.yaml"
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
    seed: int = 0
    log_every: int = 1
    save_every: int = 50
    num_workers: int = 0
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto | bf16 | fp16 (+ gradient scaler) | fp32 (auto: fp32 on CPU)
    # ddp: every rank holds the whole model (one process: no wrapper); fsdp: FSDP2
    # (fully_shard) shards the LLM layers, trained tensors, gradients and optimizer state
    strategy: str = "ddp"
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA only)
    cpu_offload: bool = False  # fsdp: sharded parameters, gradients, optimizer state in host RAM
    device: str = "auto"
    # dtype of the saved trained tensors (trainer_state/ always keeps fp32 for exact
    # resume); bf16 halves a 7B model directory (2.0 → 1.0 GiB)
    save_dtype: str = "fp32"
    skip_bad: bool = False
    # stop this run after N optimizer steps (checkpointing first), as a time-boxed or
    # preempted job would; `--resume` continues to max_steps
    stop_after: int | None = None
    progress: bool = True
    tensorboard: bool = True

    # how a setting is named in messages: set by load_train_config to say where it came
    # from (the YAML file or a key=value override)
    _name: ClassVar[Callable[[str], str]] = str
    EXAMPLE: ClassVar[str] = "configs/stage1.yaml"  # named when the config file is wrong

    def validate(self) -> None:
        """Raise ConfigError naming the setting on any value training cannot use: wrong
        type, NaN, ±inf, out of range. Numbers are normalised (1e-4 written as text)."""
        name = self._name
        for key in ("max_steps", "batch_size", "grad_accum", "log_every", "save_every"):
            setattr(self, key, check_number(getattr(self, key), name(key), integer=True,
                                            minimum=1))
        self.warmup_steps = check_number(self.warmup_steps, name("warmup_steps"),
                                         integer=True, minimum=0)
        if self.warmup_steps > self.max_steps:  # e.g. a short trial run: max_steps=1
            raise ConfigError(f"{name('warmup_steps')} {self.warmup_steps} is longer than "
                              f"max_steps {self.max_steps}; add warmup_steps=0 (or fewer) or "
                              "raise max_steps")
        # a DataLoader worker is a process: more than a machine can hold is a typo
        self.num_workers = check_number(self.num_workers, name("num_workers"), integer=True,
                                        minimum=0, maximum=1024)
        if self.stop_after is not None:
            self.stop_after = check_number(self.stop_after, name("stop_after"), integer=True,
                                           minimum=1)
        self.seed = check_seed(self.seed, name("seed"))
        self.lr = check_number(self.lr, name("lr"), above=0.0)
        self.min_lr = check_number(self.min_lr, name("min_lr"), minimum=0.0, maximum=self.lr)
        self.weight_decay = check_number(self.weight_decay, name("weight_decay"), minimum=0.0)
        self.clip = check_number(self.clip, name("clip"), minimum=0.0)  # 0: no clipping
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ConfigError(f"{name('betas')} must be two numbers like [0.9, 0.95], got "
                              f"{self.betas!r}")
        self.betas = [check_number(b, name("betas"), minimum=0.0, maximum=0.9999)
                      for b in self.betas]
        for key in ("gradient_checkpointing", "skip_bad", "progress", "tensorboard",
                    "cpu_offload"):
            if not isinstance(getattr(self, key), bool):  # the string "false" is truthy
                raise ConfigError(f"{name(key)} must be true or false, got "
                                  f"{getattr(self, key)!r}")
        for key in ("model", "data", "out", "device"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ConfigError(f"{name(key)} must be a non-empty string, got "
                                  f"{getattr(self, key)!r}")
        if self.device != "auto":
            check_device(self.device, name("device"))
        if self.save_dtype not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"{name('save_dtype')} {self.save_dtype!r}: use fp32, bf16 or "
                              "fp16")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"{name('precision')} {self.precision!r}: use auto, bf16, fp16 "
                              "or fp32")
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"{name('strategy')} {self.strategy!r}: use ddp or fsdp")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ConfigError(f"{name('optimizer')} {self.optimizer!r}: use adamw or adamw8bit")
        if self.cpu_offload and self.optimizer == "adamw8bit":
            raise ConfigError(f"{name('cpu_offload')}: the 8-bit optimizer steps on the GPU, "
                              "CPU offload steps on the CPU; choose one")
        if self.cpu_offload and self.strategy != "fsdp":
            raise ConfigError(f"{name('cpu_offload')}: CPU offload is an FSDP option; add "
                              "strategy=fsdp or drop cpu_offload")

    def file_metadata(self) -> dict[str, str]:
        """What the saved tensors' safetensors header says about the run."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(RunConfig):
    """One stage's settings (configs/stageN.yaml documents each)."""

    stage: int = 1
    # "standard": start the trained tensors from the standard inits (zero gates, zero
    # LoRA B) as when training from a base model; "keep": continue from the model's own
    init_trained: str = "keep"
    # trained-tensor groups (m2ugen/trained.py GROUP_PATTERNS) this stage trains besides its
    # own (STAGE_GROUPS), e.g. [projector] in stage 3, so the output projector follows the
    # [AUD] states that stage 3's LoRA moves; [] (the published recipe): the stage's own
    extra_groups: list[str] = field(default_factory=list)
    # groups of the stage's own set it leaves frozen, e.g. stage 2 with [lora, bias, norm,
    # prefix_query]: only the projector and the [AUD] rows train, on [AUD] states the LLM
    # no longer moves (no LLM weight gradients: a cheaper step), and stage 3's LoRA starts
    # from stage 1's; [] (the published recipe): the whole set trains
    frozen_groups: list[str] = field(default_factory=list)
    data: str = "data/synth/dataset.yaml"  # dataset spec (m2ugen/data/spec.py)
    max_len: int = 512
    group_by_length: bool = False
    feature_cache: str | None = None  # directory written by `m2ugen cache-features`
    # let a MERT whose config needs its own Python code (auto_map) run it: the user's
    # opt-in, as `m2ugen chat --trust-remote-code`; the model directory cannot grant it
    trust_remote_code: bool = False

    def _groups(self, key: str, example: str) -> list[str]:
        """A list of trained-tensor group names (extra_groups, frozen_groups), checked."""
        value = getattr(self, key)
        if (not isinstance(value, (list, tuple))
                or not all(isinstance(g, str) for g in value)):
            raise ConfigError(f"{self._name(key)} must be a list of group names like "
                              f"{example}, got {value!r}")
        unknown = sorted(set(value) - set(GROUP_PATTERNS))
        if unknown:
            raise ConfigError(f"{self._name(key)}: unknown groups {', '.join(unknown)}; "
                              f"groups are {', '.join(GROUP_PATTERNS)}")
        return list(value)

    def validate(self) -> None:
        if not isinstance(self.trust_remote_code, bool):
            raise ConfigError(f"trust_remote_code must be true or false, got "
                              f"{self.trust_remote_code!r}")
        name = self._name
        self.stage = check_number(self.stage, name("stage"), integer=True, minimum=1, maximum=3)
        self.max_len = check_number(self.max_len, name("max_len"), integer=True, minimum=1)
        super().validate()
        if not isinstance(self.group_by_length, bool):
            raise ConfigError(f"{name('group_by_length')} must be true or false, got "
                              f"{self.group_by_length!r}")
        if self.feature_cache is not None and (not isinstance(self.feature_cache, str)
                                               or not self.feature_cache.strip()):
            raise ConfigError(f"{name('feature_cache')} must be a directory path or null, got "
                              f"{self.feature_cache!r}")
        self.extra_groups = self._groups("extra_groups", "[projector]")
        self.frozen_groups = self._groups("frozen_groups", "[lora, bias]")
        both = sorted(set(self.extra_groups) & set(self.frozen_groups))
        if both:
            raise ConfigError(f"{name('frozen_groups')} and {name('extra_groups')} both name "
                              f"{', '.join(both)}: a group is trained or frozen, not both")
        own = stage_groups(self.stage)
        outside = sorted(set(self.frozen_groups) - own)
        if outside:
            raise ConfigError(f"{name('frozen_groups')}: stage {self.stage} does not train "
                              f"{', '.join(outside)}; it trains {', '.join(sorted(own))}")
        left = stage_groups(self.stage, self.extra_groups) - set(self.frozen_groups)
        if not left:
            raise ConfigError(f"{name('frozen_groups')} {self.frozen_groups} freezes every "
                              f"group stage {self.stage} trains: leave at least one")
        if self.init_trained not in ("keep", "standard"):
            raise ConfigError(f"{name('init_trained')} {self.init_trained!r}: use keep or "
                              "standard")

    def file_metadata(self) -> dict[str, str]:
        return {"stage": str(self.stage)}


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      cls: type[RunConfig] = TrainConfig) -> RunConfig:
    """Read a stage YAML (or, with `cls`, another trainer's) and apply `key=value`
    overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory; --config takes a YAML file such as "
                              f"{cls.EXAMPLE}")
        if not path.is_file():
            raise ConfigError(f"{path}: training config not found; see {cls.EXAMPLE}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save "
                              "it as UTF-8") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
    overridden: set[str] = set()
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: write key=value, e.g. max_steps=200")
        data[key.strip()] = _parse_value(value)
        overridden.add(key.strip())
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise ConfigError(f"{path or 'overrides'}: unknown settings {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        cfg = cls(**data)
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from e
    for key in ("lr", "min_lr", "weight_decay", "clip"):  # YAML reads 1e-4 as a string
        value = getattr(cfg, key)
        if isinstance(value, str):
            try:
                setattr(cfg, key, float(value))
            except ValueError:
                pass  # validate names it
    cfg._name = lambda key: f"{key} (command line)" if key in overridden else (
        f"{key} (in {path})" if path is not None else key)
    cfg.validate()
    return cfg
