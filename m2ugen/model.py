"""M2UGen: frozen encoders → adapters → injected LLM → output projector, wired together.

The assembly only: the class receives its parts (STYLE.md §2) and computes prompts,
logits, [AUD] hidden states and the training losses. Which tensors are trained lives in
`trained.py`; loading and saving model directories in `loading.py` (`from_pretrained`,
`save_pretrained` and the trained-tensor methods here are thin doors to them).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from m2ugen import loading, trained
from m2ugen.checkpoint import model_directory
from m2ugen.config import MODALITIES, M2UGenConfig
from m2ugen.errors import ConfigError
from m2ugen.media import MediaSpec
from m2ugen.modules.adapters import OutputProjector, UnderstandingAdapter
from m2ugen.modules.decoders import MusicDecoder
from m2ugen.modules.encoders import feature_shape
from m2ugen.modules.llm import InjectedLLM, Injection


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
        decoder: the frozen music decoder, or None to load it later with `load_decoder`.
        empty: allocate the trained parts on `meta` (the loader fills them from disk).
    """

    def __init__(self, config: M2UGenConfig, encoders: dict[str, nn.Module], llm: InjectedLLM,
                 base_dir: Path | None = None, empty: bool = False,
                 decoder: MusicDecoder | None = None) -> None:
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
        self._decoder = decoder  # not a submodule: it is frozen, saved nowhere, and big
        self._decoder_lock = threading.Lock()

    @property
    def decoder(self) -> MusicDecoder:
        """The frozen music decoder. Never loaded behind the reader's back: it is loaded by
        `from_pretrained(..., decoder=True)` (the default) or `load_decoder()`."""
        if self._decoder is None:
            raise ConfigError(
                f"{self.config.name}: the music decoder is not loaded (from_pretrained(..., "
                "decoder=False)); call model.load_decoder() first")
        return self._decoder

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None

    def load_decoder(self) -> MusicDecoder:
        """Load the config's music decoder on the model's device and dtype (once; later
        calls return it). Thread-safe: two first requests load it once."""
        with self._decoder_lock:
            if self._decoder is None:
                self._decoder = loading.load_model_decoder(self.config, self.base_dir,
                                                           self.device, self.dtype)
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
            music_target, music_mask: (M, N, W) 10 × decoder conditioning and its mask
                (False at padding, where the projector is trained towards zero).
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
        if music_rows is not None:  # none (M=0): FSDP's ranks all call the projector
            h = hidden[music_rows[:, None], music_positions - 1]  # (M, 8, D) predicting [AUDi]
            pred = self.project(h).float()
            # the decoder's view of the caption: its states, zero at padding (what MusicGen
            # multiplies them by; decoders/__init__ reads the length back from the zeros).
            # Every position counts; the mean is over the caption's, as it always was.
            mask = music_mask.to(pred.dtype)
            out["mse_sum"] = ((pred - music_target.float() * mask) ** 2).sum()
            out["mse_count"] = mask.sum()
        return out

    # ---- trained tensors and files: thin doors to trained.py and loading.py -------------
    def trained_parameters(self, groups: Sequence[str] | None = None) -> dict[str, nn.Parameter]:
        """Clean name → parameter for the trained tensors (all groups, or those given)."""
        return trained.trained_parameters(self, groups)

    def set_stage(self, stage: int, extra: Sequence[str] = (),
                  frozen: Sequence[str] = ()) -> int:
        """Make exactly the stage's declared groups (and `extra`, less `frozen`) trainable;
        returns the count."""
        return trained.set_stage(self, stage, extra, frozen)

    def reset_trained(self, seed: int = 0) -> None:
        """Standard initial values for every trained tensor (`trained.reset_trained`)."""
        trained.reset_trained(self, seed)

    def load_trained(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Copy trained tensors in, checked by name and shape (`trained.load_trained`)."""
        trained.load_trained(self, tensors, source)

    def save_pretrained(self, directory: str | Path, force: bool = False) -> Path:
        """Write a model directory: config, trained tensors, tokenizer. Only our files in an
        existing one are replaced; a non-empty foreign one needs `force` (model_directory)."""
        directory = Path(directory)
        with model_directory(directory, force=force) as tmp:
            self.write_model_files(tmp)
        return directory

    def write_model_files(self, directory: Path, metadata: dict[str, str] | None = None,
                          dtype: torch.dtype | None = None,
                          tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Config, tokenizer and trained tensors (the model's, or `tensors`: gathered from
        shards) into `directory` (`loading.write_model_files`)."""
        loading.write_model_files(self, directory, metadata, dtype, tensors=tensors)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, warn_untrained: bool = True,
                        trust_remote_code: bool = False, decoder: bool = True) -> M2UGen:
        """Load a model directory or a preset (`tiny` is built on first use).

        `decoder=False` skips the music decoder (text-only use, training without music
        targets); `load_decoder()` loads it later. `trust_remote_code` lets a MERT whose
        config needs its own Python code run it; it is the user's opt-in
        (--trust-remote-code), never read from the model directory, whose files are what
        the opt-in is about. dtype None: `loading.default_dtype` of the device; a name
        ("auto", "bf16", "fp16", "fp32") is resolved by `loading.choose_dtype`, as --dtype.
        """
        return loading.load_model(cls, name_or_dir, device, dtype, warn_untrained=warn_untrained,
                                  trust_remote_code=trust_remote_code, decoder=decoder)

    @classmethod
    def read_media_spec(cls, name_or_dir: str | Path) -> MediaSpec:
        """The `media_spec` a model will have, read from config files only (no weights)."""
        return loading.read_media_spec(name_or_dir, model_cls=cls)
