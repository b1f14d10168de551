"""M2UGen: frozen encoders → adapters → injected LLM → output projector, wired together.

The class receives its parts (STYLE.md §2); `from_pretrained` is the one loading entry
point for model directories and presets. The trainable set of each training stage is
declared once, in `STAGE_GROUPS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m2ugen.checkpoint import (
    TRAINED_NAME,
    fingerprint,
    load_tensors,
    model_directory,
    save_tensors,
)
from m2ugen.config import MODALITIES, M2UGenConfig, resolve_component
from m2ugen.errors import ConfigError, check_device, nonfinite_weights
from m2ugen.media import MediaSpec
from m2ugen.modules.adapters import OutputProjector, UnderstandingAdapter
from m2ugen.modules.decoders import MusicDecoder, load_decoder
from m2ugen.modules.encoders import feature_shape, load_encoders
from m2ugen.modules.llm import InjectedLLM, Injection, load_llm
from m2ugen.presets import resolve_model

log = logging.getLogger(__name__)


# Trained-tensor groups, matched against clean parameter names (see `clean_name`).
GROUP_PATTERNS: dict[str, re.Pattern[str]] = {
    "adapters": re.compile(r"^adapters\."),
    "prefix_query": re.compile(r"^llm\.prefix_query\."),
    "gates": re.compile(r"^llm\.gates$"),
    "lora": re.compile(r"\.lora_[AB]\.weight$"),
    # published biases: wq, wo, w1, w2, w3 (wk and wv have none)
    "bias": re.compile(r"\.(q_proj|o_proj|gate_proj|up_proj|down_proj)\.bias$"),
    "norm": re.compile(r"^llm\..*(layernorm|\.norm)\.weight$"),
    "new_tokens": re.compile(r"\.trainable_tokens_delta$"),
    "projector": re.compile(r"^projector\."),
}
_LLM_TUNING = {"lora", "bias", "norm", "new_tokens", "prefix_query"}
# ORIGINAL_M2UGEN.md §4 trainable sets, plus the injection gates in stages 1 and 3 (§5.1).
STAGE_GROUPS: dict[int, frozenset[str]] = {
    1: frozenset(_LLM_TUNING | {"adapters", "gates", "projector"}),
    2: frozenset(_LLM_TUNING | {"projector"}),
    3: frozenset(_LLM_TUNING | {"gates"}),
}


def clean_name(name: str) -> str:
    """Parameter name without peft's wrapper parts, stable across peft versions."""
    return (name.replace("base_model.model.", "", 1).replace(".default", "")
            .replace(".base_layer.", ".").replace(".token_adapter.", "."))


def tensor_group(name: str) -> str | None:
    """The trained-tensor group of a clean parameter name, or None for frozen weights."""
    for group, pattern in GROUP_PATTERNS.items():
        if pattern.search(name):
            return group
    return None


def _as_batch(items: Any, batch: int, name: str) -> list[Any] | None:
    """None | one item | a list of B items (None = absent for that sample)."""
    if items is None:
        return None
    if isinstance(items, (list, tuple)):
        if len(items) != batch:
            raise ConfigError(f"{name}: got {len(items)} items for a batch of {batch}")
        return list(items)
    return [items] * batch


class M2UGen(nn.Module):
    """The assembled model.

    Args:
        config: the model's config.
        encoders: {"audio": MusicEncoder, "image": ImageEncoder, "video": VideoEncoder}.
        llm: the injected LLM.
        base_dir: the model directory relative component paths resolve against.
    """

    def __init__(self, config: M2UGenConfig, encoders: dict[str, nn.Module], llm: InjectedLLM,
                 base_dir: Path | None = None, empty: bool = False) -> None:
        super().__init__()
        self.config = config
        self.base_dir = base_dir
        self.encoders = nn.ModuleDict(encoders)
        for m in MODALITIES:
            got = feature_shape(encoders[m])
            want = self.feature_shape(m)
            if got != want:
                raise ConfigError(
                    f"the {m} encoder emits {got[0]}×{got[1]} features but the config expects "
                    f"{want[0]}×{want[1]}: the encoder does not match this model directory"
                )
        d = config.llm_dim
        kw = {"blocks": config.adapter_blocks, "norm": config.adapter_norm,
              "eps": config.adapter_norm_eps}
        # `empty`: allocate nothing yet (meta); the caller loads every value from disk, which
        # skips a random init of ~0.5 B parameters at LLaMA-2-7B size
        with torch.device("meta") if empty else nullcontext():
            self.adapters = nn.ModuleDict(
                {m: UnderstandingAdapter(*self.feature_shape(m), d, **kw) for m in MODALITIES})
            self.projector = OutputProjector(
                d, config.projector_dim, config.projector_tokens, width=config.projector_width,
                heads=config.projector_heads, layers=config.projector_layers,
                ffn=config.projector_ffn)
        self.llm = llm
        self.requires_grad_(False)
        self._decoder: MusicDecoder | None = None  # loaded on first use (not a submodule)

    @property
    def decoder(self) -> MusicDecoder:
        """The frozen music decoder, loaded on first use on the model's device and dtype."""
        if self._decoder is None:
            path = resolve_component(self.config.decoder_path, self.base_dir)
            decoder = load_decoder(self.config.decoder, path, self.device, self.dtype)
            nonfinite_weights(path, _decoder_parameters(decoder))
            want = (self.config.projector_tokens, self.config.projector_dim)
            if decoder.cond_shape != want:
                raise ConfigError(
                    f"{path}: the decoder takes conditioning {decoder.cond_shape[0]}×"
                    f"{decoder.cond_shape[1]} but the projector makes {want[0]}×{want[1]}; "
                    "name the decoder this model was trained with")
            self._decoder = decoder
        return self._decoder

    def audio_token_embeds(self, batch: int) -> torch.Tensor:
        """Embeddings of [AUD0..] (B, 8, D), trained rows included."""
        ids = torch.tensor(self.llm.audio_token_ids, device=self.device)
        return self.llm.embed_tokens(ids)[None].expand(batch, -1, -1)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pre-norm hidden states at the [AUD] positions (B, 8, D) → projector (B, N, W)."""
        return self.projector(hidden.to(self.dtype), self.audio_token_embeds(hidden.shape[0]))

    @torch.no_grad()
    def audio_token_hidden(self, ids: list[int], prompts: torch.Tensor) -> torch.Tensor:
        """Run `ids` (ending with the 8 [AUD] tokens) and return the pre-norm hidden states
        at the positions that predict them: (8, D)."""
        n = len(self.llm.audio_token_ids)
        if ids[-n:] != self.llm.audio_token_ids:
            raise ValueError("ids must end with the audio tokens")
        seq = torch.tensor([ids], device=self.device)
        injection = Injection(prompts, capture=[])
        self.llm(seq, injection=injection, use_cache=False)
        return injection.capture[-1][0, -n - 1:-1]

    def train(self, mode: bool = True) -> M2UGen:
        """Frozen encoders stay in eval mode (HuBERT's LayerDrop would drop layers)."""
        super().train(mode)
        self.encoders.eval()
        return self

    def feature_shape(self, modality: str) -> tuple[int, int]:
        c = self.config
        return {"audio": (c.mert_layers, c.mert_dim), "image": (c.vit_tokens, c.vit_dim),
                "video": (c.vivit_tokens, c.vivit_dim)}[modality]

    @property
    def media_spec(self) -> MediaSpec:
        """How media must be loaded for this model's encoders (`media.load_media`)."""
        return MediaSpec(sample_rate=self.encoders["audio"].sample_rate,
                         num_frames=self.encoders["video"].num_frames)

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def device(self) -> torch.device:
        return self.llm.prefix_query.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.prefix_query.weight.dtype

    # ---- understanding path -------------------------------------------------------
    def encode(self, batch: int, audio: Any = None, image: Any = None,
               video: Any = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Raw encoder features per modality: {m: (feats (B, tokens, width), present (B,))}.

        Each media argument is None, one item (used for every sample) or a list of B
        items with None where a sample lacks that modality. Audio items are waveforms at
        the MERT rate, images PIL images, videos (frames, H, W, 3) uint8 arrays.
        """
        out = {}
        for m, items in zip(MODALITIES, (audio, image, video), strict=True):
            items = _as_batch(items, batch, m)
            if items is None or all(x is None for x in items):
                continue
            present = torch.tensor([x is not None for x in items], device=self.device)
            idx = [i for i, x in enumerate(items) if x is not None]
            got = self.encoders[m]([items[i] for i in idx]).to(self.device, self.dtype)
            feats = torch.zeros(batch, *got.shape[1:], device=self.device, dtype=self.dtype)
            feats[idx] = got
            out[m] = (feats, present)
        return out

    def layer_prompts(self, feats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      batch: int) -> torch.Tensor:
        """Prompt vector of each injected layer: (3Q, B, D).

        Layer j of the top 3Q gets `prefix_query[j]`, plus the adapted modality vector
        when that sample has the modality (Q layers each: audio, image, video).
        """
        q = self.config.query_layers
        prompts = self.llm.prefix_query.weight[:, None, :].expand(-1, batch, -1)
        extra = torch.zeros_like(prompts)
        for k, m in enumerate(MODALITIES):
            if m not in feats:
                continue
            f, present = feats[m]
            vec = self.adapters[m](f)[:, 0] * present[:, None].to(f.dtype)  # (B, D)
            extra[k * q:(k + 1) * q] = vec[None]
        return prompts + extra

    def media_prompts(self, batch: int, audio: Any = None, image: Any = None,
                      video: Any = None) -> torch.Tensor:
        return self.layer_prompts(self.encode(batch, audio, image, video), batch)

    @torch.no_grad()
    def forward_logits(self, input_ids: torch.Tensor, *, audio: Any = None, image: Any = None,
                       video: Any = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) and raw media → next-token logits (B, T, V)."""
        input_ids = input_ids.to(self.device)
        prompts = self.media_prompts(input_ids.shape[0], audio, image, video)
        return self.llm(input_ids, injection=Injection(prompts), attention_mask=attention_mask,
                        use_cache=False).logits

    # ---- training -------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, feats: dict[str, tuple[torch.Tensor, torch.Tensor]],
                music_rows: torch.Tensor | None = None,
                music_positions: torch.Tensor | None = None,
                music_target: torch.Tensor | None = None,
                music_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Summed losses and their counts, for the trainer to normalise globally.

        Args:
            input_ids, attention_mask, labels: (B, T); labels -100 where not supervised.
            feats: raw encoder features per modality, as `encode` returns them.
            music_rows: (M,) batch rows whose response is music.
            music_positions: (M, 8) positions of [AUD0..7] in those rows.
            music_target, music_mask: (M, N, W) 10 × decoder conditioning and its mask.
        Returns:
            {"ce_sum", "ce_count", "mse_sum", "mse_count"} (0-dim tensors).
        """
        prompts = self.layer_prompts(feats, input_ids.shape[0])
        # the injection travels with the call: gradient checkpointing re-runs the hooked
        # layers during backward with the same keywords, so they see the same prompts
        injection = Injection(prompts, capture=[])
        logits = self.llm(input_ids, injection=injection, attention_mask=attention_mask,
                          use_cache=False).logits
        hidden = injection.capture[0]  # (B, T, D), before the final norm
        targets = labels[:, 1:]
        ce_sum = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
            ignore_index=-100, reduction="sum")
        zero = ce_sum.new_zeros(())
        out = {"ce_sum": ce_sum, "ce_count": (targets != -100).sum().to(ce_sum.dtype),
               "mse_sum": zero, "mse_count": zero}
        if music_rows is not None and len(music_rows):
            h = hidden[music_rows[:, None], music_positions - 1]  # (M, 8, D) predicting [AUDi]
            pred = self.project(h).float()
            mask = music_mask.to(pred.dtype)
            out["mse_sum"] = ((pred - music_target.float()) ** 2 * mask).sum()
            out["mse_count"] = mask.sum()
        return out

    # ---- trained tensors ----------------------------------------------------------
    def trained_parameters(self, groups: Sequence[str] | None = None) -> dict[str, nn.Parameter]:
        """Clean name → parameter for the trained tensors (all groups, or those given)."""
        out = {}
        for name, p in self.named_parameters():
            if name.startswith("encoders."):
                continue
            clean = clean_name(name)
            group = tensor_group(clean)
            if group is not None and (groups is None or group in groups):
                out[clean] = p
        return out

    def set_stage(self, stage: int) -> int:
        """Make exactly the stage's declared groups trainable; returns the count."""
        if stage not in STAGE_GROUPS:
            raise ConfigError(f"stage {stage} is unknown; stages are 1, 2, 3")
        self.llm.unmerge()  # training needs the deltas separate from the base weights
        self.requires_grad_(False)
        params = self.trained_parameters(STAGE_GROUPS[stage])
        for p in params.values():
            p.requires_grad_(True)
        return sum(p.numel() for p in params.values())

    @torch.no_grad()
    def reset_trained(self, seed: int = 0) -> None:
        """Standard initial values for every trained tensor, as training from a base model
        starts: zero gates (inputs unseen), zero LoRA B and biases, unit norms, default
        initialisation of adapters, projector and prefix queries."""
        torch.manual_seed(seed)
        for module in (*self.adapters.modules(), *self.projector.modules()):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        for p in self.projector.tfm.parameters():  # nn.Transformer's own init
            if p.dim() > 1:
                torch.nn.init.xavier_uniform_(p)
        torch.nn.init.normal_(self.projector.query_embs)
        self.llm.prefix_query.reset_parameters()
        for name, p in self.trained_parameters().items():
            group = tensor_group(name)
            if group == "gates" or group == "bias" or name.endswith("lora_B.weight"):
                p.zero_()
            elif name.endswith("lora_A.weight"):
                torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)  # peft's default for A
            elif group == "norm":
                p.fill_(1.0)

    def load_trained(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Copy trained tensors in; every expected name must be present with its shape."""
        nonfinite_weights(source, iter(tensors.items()),
                          fix="copy the file again, or re-train or re-convert the model")
        params = self.trained_parameters()
        missing = sorted(set(params) - set(tensors))
        unexpected = sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise ConfigError(
                f"{source}: trained tensors do not match this model ({len(missing)} missing, "
                f"e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); "
                "was it saved for another config?")
        with torch.no_grad():
            for name, p in params.items():
                t = tensors[name]
                if t.shape != p.shape:
                    raise ConfigError(f"{source}: {name} has shape {tuple(t.shape)}, the model "
                                      f"needs {tuple(p.shape)}; the config does not match")
                p.copy_(t.to(p.dtype))

    def save_pretrained(self, directory: str | Path, force: bool = False) -> Path:
        """Write a model directory: config, trained tensors, tokenizer. Only our files in an
        existing one are replaced; a non-empty foreign one needs `force` (model_directory)."""
        directory = Path(directory)
        with model_directory(directory, force=force) as tmp:
            self.write_model_files(tmp)
        return directory

    def write_model_files(self, directory: Path, metadata: dict[str, str] | None = None,
                          dtype: torch.dtype | None = None) -> None:
        """Config, tokenizer and trained tensors (cast to `dtype` if given) into
        `directory`, each file atomically."""
        cfg = M2UGenConfig.from_dict(self.config.to_dict())
        for key in ("llm", "mert", "vit", "vivit", "decoder_path"):
            ref = resolve_component(getattr(cfg, key), self.base_dir)
            if Path(ref).exists():  # local component: keep pointing at it from anywhere
                setattr(cfg, key, str(Path(ref).resolve()))
                cfg.base_fingerprints[key] = (cfg.base_fingerprints.get(key)
                                              or fingerprint(ref) or "")
        cfg.tokenizer = "tokenizer"
        cfg.save(directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        tensors = {k: v if dtype is None else v.to(dtype)
                   for k, v in self.trained_parameters().items()}
        save_tensors(directory / TRAINED_NAME, tensors,
                     metadata={"format": "m2ugen", "version": str(cfg.format_version),
                               **(metadata or {})})

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, warn_untrained: bool = True,
                        trust_remote_code: bool = False) -> M2UGen:
        """Load a model directory or a preset (`tiny` is built on first use).

        `trust_remote_code` lets a MERT whose config needs its own Python code run it; it
        is the user's opt-in (--trust-remote-code), never read from the model directory,
        whose files are what the opt-in is about.
        """
        config, base = resolve_model(name_or_dir, model_cls=cls)
        device = check_device(device)  # "tpu", "meta", a missing cuda:7: one line
        if dtype is None:
            dtype = default_dtype(device)
        def ref(key: str) -> str:
            return resolve_component(getattr(config, key), base)
        encoders = load_encoders(ref("mert"), ref("vit"), ref("vivit"), dtype,
                                 config.mert_chunk_seconds, device, trust_remote_code)
        llm = load_llm(ref("llm"), ref("tokenizer"), config, dtype, device)
        # NaN-filled weight files load fine and fail much later (NaN logits); name them now
        for key, module in (("mert", encoders["audio"]), ("vit", encoders["image"]),
                            ("vivit", encoders["video"]), ("llm", llm)):
            nonfinite_weights(ref(key), module.named_parameters())
        trained = base / TRAINED_NAME if base is not None else None
        has_trained = trained is not None and trained.is_file()
        model = cls(config, encoders, llm, base_dir=base, empty=has_trained)
        if has_trained:  # allocate the meta parts directly in the target dtype and device
            for part in (model.adapters, model.projector):
                part.to(dtype=dtype).to_empty(device=device)
        model.to(device=device, dtype=dtype)
        if has_trained:
            model.load_trained(load_tensors(trained), str(trained))
            _check_fingerprints(config, base)
        elif warn_untrained:
            log.warning("%s has no %s: the model is UNTRAINED (zero gates ignore audio, image "
                        "and video)", name_or_dir, TRAINED_NAME)
        return model.eval()


def _check_fingerprints(config: M2UGenConfig, base: Path | None) -> None:
    """Warn loudly when a local base component changed since the model was written."""
    for key, expected in config.base_fingerprints.items():
        ref = resolve_component(getattr(config, key), base)
        found = fingerprint(ref)
        if expected and found is not None and found != expected:
            log.warning("%s (%s) is not the %s this model was trained on: its weights changed "
                        "since the model directory was written, so the trained tensors will "
                        "not fit them; point the config at the original", ref, key, key)


def _decoder_parameters(decoder: MusicDecoder) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every module a decoder holds (a pipeline's components too)."""
    parts = dict(vars(decoder))
    pipe = parts.get("pipe")
    if pipe is not None:
        parts.update(getattr(pipe, "components", {}))
    for key, part in parts.items():
        if isinstance(part, nn.Module):
            for name, p in part.named_parameters():
                yield f"{key}.{name}", p


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (DESIGN.md §6)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32

