"""`m2ugen train-decoder` settings: the shared trainer settings (`RunConfig`) plus what a
decoder fine-tune needs (configs/decoder_musicgen.yaml and decoder_audioldm2.yaml document
each)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from m2ugen.data.audio_captions import DATA_FORMATS
from m2ugen.errors import ConfigError, check_number
from m2ugen.modules.decoders import SCHEDULERS
from m2ugen.modules.decoders.tuning import TUNINGS, Tuning
from m2ugen.training.config import RunConfig

MAX_RENDERS = 16  # held-out captions rendered per evaluation: a look, not a benchmark


@dataclass
class DecoderTrainConfig(RunConfig):
    """A decoder fine-tune: which model's decoder, on which audio + captions, how."""

    EXAMPLE: ClassVar[str] = "configs/decoder_musicgen.yaml"

    model: str = "tiny"  # the model directory or preset whose music decoder is fine-tuned
    data: str = "data/synth/mucaps.json"  # audio + caption records
    data_format: str = "mucaps"  # mucaps ({file: caption}) | audioldm ({"data": [...]})
    audio_root: str | None = None  # where the audio files are (default: beside data)
    out: str = "runs/decoder_musicgen"
    lr: float = 1e-4
    weight_decay: float = 0.0
    tuning: str = "lora"  # lora (peft, attention/projection layers) | full
    lora_rank: int = 8
    lora_alpha: int = 8  # alpha == rank: LoRA scale 1
    lora_targets: list[str] = field(default_factory=list)  # [] = the kind's defaults
    merge: bool = True  # fold the LoRA into the decoder's weights when a model loads it
    clip_seconds: float = 10.0  # every clip is cut or zero-padded to this length
    cond_dropout: float = 0.1  # captions replaced by the unconditional one (for CFG)
    quality_column: str | None = None  # audioldm records: per-clip score → quality tag
    quality_threshold: float = 0.5  # score >= threshold: "high quality, …", else "low …"
    cache: str | None = None  # EnCodec codes / VAE latents (default: <out>/decoder_cache)
    holdout: int = 2  # last N records kept out of training, rendered by evaluations
    eval_every: int = 0  # render the held-out captions every N steps (0: never)
    eval_seconds: float = 2.0
    eval_guidance: float = 3.0
    eval_scheduler: str = "dpm++"  # AudioLDM2's sampler for the renders
    eval_steps: int | None = None  # AudioLDM2: None = the sampler's default
    # score each evaluation's renders against the held-out clips (`m2ugen eval folder`:
    # FAD, KL, CLAP, …; embeddings: standard hub ids, tiny, or a JSON file)
    eval_metrics: bool = False
    eval_embeddings: str | None = None

    def validate(self) -> None:
        super().validate()
        name = self._name
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"{name('data_format')} {self.data_format!r}: use one of "
                              f"{', '.join(DATA_FORMATS)}")
        if self.tuning not in TUNINGS:
            raise ConfigError(f"{name('tuning')} {self.tuning!r}: use lora or full")
        self.lora_rank = check_number(self.lora_rank, name("lora_rank"), integer=True,
                                      minimum=1, maximum=4096)
        self.lora_alpha = check_number(self.lora_alpha, name("lora_alpha"), integer=True,
                                       minimum=1)
        if not isinstance(self.lora_targets, list) or not all(
                isinstance(t, str) and t.strip() for t in self.lora_targets):
            raise ConfigError(f"{name('lora_targets')} must be a list of layer names like "
                              f"[q_proj, v_proj], got {self.lora_targets!r}")
        if not isinstance(self.merge, bool):
            raise ConfigError(f"{name('merge')} must be true or false, got {self.merge!r}")
        self.clip_seconds = check_number(self.clip_seconds, name("clip_seconds"),
                                         minimum=0.1, maximum=600.0)
        self.cond_dropout = check_number(self.cond_dropout, name("cond_dropout"),
                                         minimum=0.0, maximum=1.0)
        self.quality_threshold = check_number(self.quality_threshold,
                                              name("quality_threshold"))
        self.holdout = check_number(self.holdout, name("holdout"), integer=True, minimum=0,
                                    maximum=MAX_RENDERS)
        self.eval_every = check_number(self.eval_every, name("eval_every"), integer=True,
                                       minimum=0)
        self.eval_seconds = check_number(self.eval_seconds, name("eval_seconds"),
                                         minimum=0.1, maximum=60.0)
        self.eval_guidance = check_number(self.eval_guidance, name("eval_guidance"),
                                          minimum=0.0, maximum=100.0)
        if self.eval_steps is not None:
            self.eval_steps = check_number(self.eval_steps, name("eval_steps"), integer=True,
                                           minimum=1, maximum=1000)
        if self.eval_scheduler not in SCHEDULERS:
            raise ConfigError(f"{name('eval_scheduler')} {self.eval_scheduler!r}: use one of "
                              f"{', '.join(SCHEDULERS)}")
        if self.eval_every and not self.holdout:
            raise ConfigError(f"{name('eval_every')}: evaluations render held-out captions; "
                              "set holdout=N (N >= 1) or eval_every=0")
        if not isinstance(self.eval_metrics, bool):
            raise ConfigError(f"{name('eval_metrics')} must be true or false, got "
                              f"{self.eval_metrics!r}")
        if self.eval_metrics and not self.eval_every:
            raise ConfigError(f"{name('eval_metrics')}: scores the renders of evaluations; "
                              "set eval_every=N or drop eval_metrics")
        for key in ("audio_root", "cache", "quality_column", "eval_embeddings"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{name(key)} must be a non-empty string or null, got "
                                  f"{value!r}")
        if self.eval_metrics and self.eval_embeddings not in (None, "standard", "tiny"):
            self._check_embeddings_file(name("eval_embeddings"))
        if self.gradient_checkpointing:
            raise ConfigError(f"{name('gradient_checkpointing')}: not offered by "
                              "train-decoder (its modules run in eval mode); drop it")

    def _check_embeddings_file(self, shown: str) -> None:
        """A JSON file of embedding models, read now: the first scored evaluation would
        otherwise find it bad only after eval_every training steps."""
        from m2ugen.eval.config import resolve_eval_models

        if not Path(self.eval_embeddings).is_file():
            raise ConfigError(f"{shown} {self.eval_embeddings!r}: use standard, tiny or a JSON "
                              "file naming the models ({role: hub id or directory})")
        try:
            resolve_eval_models(self.eval_embeddings)
        except ConfigError as e:
            raise ConfigError(f"{shown}: {e}") from e

    @property
    def tuning_spec(self) -> Tuning:
        return Tuning(mode=self.tuning, rank=self.lora_rank, alpha=self.lora_alpha,
                      targets=list(self.lora_targets))

    def file_metadata(self) -> dict[str, str]:
        return {"decoder_tuning": self.tuning}
