"""A published M2UGen `checkpoint.pth` → our model directory (`m2ugen convert-original`).

The published file pickles the WHOLE model (ORIGINAL_M2UGEN.md §1, §4). Only the trained
tensors are kept, renamed to our stable names (`M2UGen.trained_parameters()`); the frozen
encoders, LLM and decoder are ignored because they load from their own ids. Sizes are read
off tensor shapes and checked against the named components' configs.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import torch
from safetensors import safe_open

from m2ugen.checkpoint import TRAINED_NAME, check_output_dir, model_directory, save_tensors
from m2ugen.config import M2UGenConfig
from m2ugen.errors import ConfigError
from m2ugen.info import component_dir, decoder_cond_shape, read_config
from m2ugen.modules.encoders import encoder_features
from m2ugen.modules.meta_llama import LAYER_NAMES, permute_to_hf, resolve_llm_path
from m2ugen.safe_load import load_weights_only
from m2ugen.trained import current_name, tensor_group

ADAPTER_PREFIXES = {"audio": "mu_mert", "image": "iu_vit", "video": "iu_vivit"}
# published LLaMA layer parts → HF names (the projections carry LoRA; the norms train)
_PROJ = {k: v for k, v in LAYER_NAMES.items() if k.startswith(("attention.w", "feed_forward."))}
_BIASED = ("attention.wq", "attention.wo", "feed_forward.w1", "feed_forward.w2",
           "feed_forward.w3")
_BLOCK = ("norm", "f1", "f2", "f3")  # published `{prefix}_{part}_{k}`, k = 1..blocks
_NORMS = {k: v for k, v in LAYER_NAMES.items() if k.endswith("_norm")}
# frozen parts of the whole-model pickle, with why they are not converted
_FROZEN = {"mert_model.": "frozen music encoder (loads from --mert)",
           "vit_model.": "frozen image encoder (loads from --vit)",
           "vivit_model.": "frozen video encoder (loads from --vivit)",
           "generation_model.": "frozen music decoder (loads from --decoder-path)"}
_LLM = "llm.model.model"
EMBED_RTOL = 1e-3  # a base row counts as trained when it moved beyond dtype rounding


@dataclass
class Detected:
    """Sizes read off the checkpoint's tensor shapes."""

    llm_dim: int
    llm_layers: int
    heads: int
    query_layers: int
    lora_rank: int
    vocab: int
    feats: dict[str, tuple[int, int]]  # modality → (tokens, width)
    adapter_blocks: int
    legacy: bool
    projector_width: int
    projector_tokens: int
    projector_dim: int
    projector_ffn: int
    projector_layers: int
    decoder: str
    kv_heads: int = 0  # from the LLM's config (Meta wk rows are permuted per kv head)
    tied: bool = False


# suggestions for a mismatch: (kind, tokens, width) → the release's component of that shape
_KNOWN = {("mert", 25, 1024): "m-a-p/MERT-v1-330M", ("mert", 13, 768): "m-a-p/MERT-v1-95M",
          ("vit", 197, 768): "google/vit-base-patch16-224",
          ("vit", 197, 1024): "google/vit-large-patch16-224",
          ("vivit", 3137, 768): "google/vivit-b-16x2-kinetics400"}
_FEATS = {"audio": ("mert", "MERT"), "image": ("vit", "ViT"), "video": ("vivit", "ViViT")}


def check_components(det: Detected, refs: dict[str, str], llm_cfg: dict, skip: bool,
                     notes: list[str]) -> int | None:
    """Raise ConfigError where a named component does not fit the checkpoint's shapes.

    Returns the ViViT frame count (None when unchecked).
    """
    got = (int(llm_cfg["hidden_size"]), int(llm_cfg["num_hidden_layers"]),
           int(llm_cfg["num_attention_heads"]))
    want = (det.llm_dim, det.llm_layers, det.heads)
    if got != want:
        raise ConfigError(f"the checkpoint's LLM is D={want[0]}, {want[1]} layers, {want[2]} "
                          f"heads but {refs['llm']} is D={got[0]}, {got[1]} layers, {got[2]} "
                          "heads: pass the LLaMA it was trained on with --llm")
    if skip:
        notes.append("--skip-checks: encoder and decoder sizes were NOT checked")
        return None
    frames = None
    for m, (kind, label) in _FEATS.items():
        cfg = read_config(refs[kind], f"--{kind}")
        tokens, width = encoder_features(kind, cfg)
        t, w = det.feats[m]
        if kind == "vivit":
            frames = int(cfg["num_frames"])
        if (tokens, width) == (t, w):
            continue
        what = (f"{label} features {w} wide" if w != width else f"{t} {label} tokens")
        gives = f"{width} wide" if w != width else f"{tokens}"
        hint = _KNOWN.get((kind, t, w))
        fix = f"pass --{kind} {hint}" if hint else f"pass the {label} it was trained with"
        raise ConfigError(f"checkpoint adapters expect {what} but {refs[kind]} gives "
                          f"{gives}: {fix}")
    cond = decoder_cond_shape(det.decoder, refs["decoder_path"])
    if cond != (det.projector_tokens, det.projector_dim):
        raise ConfigError(f"the checkpoint's projector makes {det.projector_tokens}×"
                          f"{det.projector_dim} but {refs['decoder_path']} takes {cond[0]}×"
                          f"{cond[1]}: pass the decoder it was trained with (--decoder-path)")
    return frames


@dataclass
class Report:
    """What the conversion did, for the summary."""

    source: str
    out: str = ""
    mapped: Counter = field(default_factory=Counter)  # our group → tensors
    values: int = 0
    ignored: Counter = field(default_factory=Counter)  # reason → tensors
    unknown: list[str] = field(default_factory=list)
    extra_rows: int = 0
    all_gates_zero: bool = False
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"converted {self.source} -> {self.out}",
                 f"  mapped {sum(self.mapped.values())} tensors "
                 f"({self.values / 1e6:.2f} M values):"]
        lines += [f"    {g:<13} {n:>5}" for g, n in sorted(self.mapped.items())]
        if self.extra_rows:
            lines.append(f"    ({self.extra_rows} base-vocabulary embedding rows differ from the "
                         "base LLM and are kept as extra_token_rows)")
        lines.append(f"  ignored {sum(self.ignored.values())} tensors:")
        lines += [f"    {n:>5}  {why}" for why, n in sorted(self.ignored.items())]
        lines += [f"  note: {n}" for n in self.notes]
        if self.unknown:
            shown = ", ".join(self.unknown[:10]) + (" …" if len(self.unknown) > 10 else "")
            lines.append(f"  WARNING: {len(self.unknown)} unknown tensors were NOT converted: "
                         f"{shown}")
        if self.all_gates_zero:
            lines.append("  WARNING: every injection gate is zero: this checkpoint IGNORES "
                         "audio, image and video inputs (the published gates were never "
                         "trained, ORIGINAL_M2UGEN.md §5.1); train stage 1/3 to fix it")
        return "\n".join(lines)


def load_published(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a published checkpoint (`module.` prefixes removed), memory-mapped."""
    # the published training code pickles its argparse.Namespace beside the weights
    # (LLaMA-Adapter misc.save_model: model, optimizer, epoch, scaler, args); that class
    # only holds attributes, so it is the one global allowed beyond tensors and plain data
    obj = load_weights_only(path, allow=(argparse.Namespace,))
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ConfigError(f"{path}: expected a dict with a 'model' state dict (the published "
                          "checkpoint.pth layout) or a plain state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _need(state: dict[str, torch.Tensor], key: str, used: set[str] | None = None
          ) -> torch.Tensor:
    """state[key], marked as used; a missing key is a ConfigError naming it."""
    if key not in state:
        raise ConfigError(f"checkpoint has no {key!r}; is it a published M2UGen checkpoint?")
    if used is not None:
        used.add(key)
    return state[key]


def detect(state: dict[str, torch.Tensor]) -> Detected:
    """Sizes read off tensor shapes (nothing else is trusted)."""
    pq = _need(state, "prefix_query.weight")
    layers = 1 + max((int(m.group(1)) for k in state
                      if (m := re.match(r"llama\.layers\.(\d+)\.", k))), default=-1)
    gate = _need(state, "llama.layers.0.attention.gate")
    if pq.shape[0] % 3:
        raise ConfigError(f"prefix_query has {pq.shape[0]} rows; expected 3·Q")
    feats = {}
    for m, pfx in ADAPTER_PREFIXES.items():
        agg, proj = _need(state, f"{pfx}_agg.weight"), _need(state, f"{pfx}_proj.weight")
        feats[m] = (agg.shape[1], proj.shape[1])
    blocks = len([k for k in state if re.fullmatch(r"mu_mert_norm_\d+\.weight", k)])
    f1 = _need(state, "mu_mert_f1_1.weight")
    if f1.shape[0] != pq.shape[1]:
        raise ConfigError(f"adapter blocks are {pq.shape[1]}→{f1.shape[0]} wide; m2ugen's "
                          f"adapters are D→D (D={pq.shape[1]}) as in the published release")
    legacy = "mu_mert_norm_1.bias" in state or "mu_mert_f1_1.bias" in state
    fc = _need(state, "output_projector.fc.weight")
    q = _need(state, "output_projector.query_embs")
    out_w = _need(state, "output_projector.model.weight")
    ffn = _need(state, "output_projector.tfm.encoder.layers.0.linear1.weight")
    tfm_layers = len({k.split(".")[4] for k in state
                      if k.startswith("output_projector.tfm.encoder.layers.")})
    return Detected(
        llm_dim=pq.shape[1], llm_layers=layers, heads=gate.shape[1],
        query_layers=pq.shape[0] // 3,
        lora_rank=_need(state, "llama.layers.0.attention.lora_wq_l1.weight").shape[0],
        vocab=_need(state, "llama.tok_embeddings.weight").shape[0],
        feats=feats, adapter_blocks=blocks, legacy=legacy,
        projector_width=fc.shape[0], projector_tokens=q.shape[1], projector_dim=out_w.shape[0],
        projector_ffn=ffn.shape[0], projector_layers=tfm_layers,
        decoder="audioldm2" if q.shape[1] == 1 else "musicgen")


def _base_rows(llm_path: str, name: str) -> torch.Tensor:
    """One tensor of the base LLM's safetensors (read alone, not the whole model)."""
    root = component_dir(llm_path)
    if root is None:
        raise ConfigError(f"{llm_path}: the base LLM's weights are not available locally (its "
                          "embedding rows are compared with the checkpoint's); download it "
                          "or pass a local --llm directory")
    for f in sorted(root.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            if name in sf.keys():
                return sf.get_tensor(name)
    raise ConfigError(f"{llm_path}: no {name} in its safetensors files")


def _changed_rows(ckpt: torch.Tensor, base: torch.Tensor) -> list[int]:
    """Rows of `ckpt[:len(base)]` that differ from `base` beyond dtype rounding."""
    a, b = ckpt[: base.shape[0]].float(), base.float()
    diff = (a - b).abs() > EMBED_RTOL * b.abs() + 1e-6
    return diff.any(dim=1).nonzero().flatten().tolist()


def map_tensors(state: dict[str, torch.Tensor], det: Detected, token_rows: list[int],
                report: Report) -> dict[str, torch.Tensor]:
    """Published names → our names; every key is either mapped, ignored or reported."""
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    heads, kv = det.heads, det.kv_heads
    first = det.llm_layers - 3 * det.query_layers
    gates = []
    for i in range(det.llm_layers):
        src, dst = f"llama.layers.{i}.", f"{_LLM}.layers.{i}."
        for meta, ours in _PROJ.items():
            # wq/wk output rows (bias, LoRA l2) follow the rotary permutation
            rows = heads if meta == "attention.wq" else kv if meta == "attention.wk" else 0
            part, w = meta.rsplit(".", 1)
            lora = f"{src}{part}.lora_{w}"
            out[f"{dst}{ours}.lora_A.weight"] = _need(state, f"{lora}_l1.weight", used)  # (r, in)
            b = _need(state, f"{lora}_l2.weight", used)  # (out, r)
            out[f"{dst}{ours}.lora_B.weight"] = permute_to_hf(b, rows) if rows else b
            if meta in _BIASED:
                bias = _need(state, f"{src}{meta}.bias", used)
                out[f"{dst}{ours}.bias"] = permute_to_hf(bias, rows) if rows else bias
        for meta, ours in _NORMS.items():
            out[f"{dst}{ours}.weight"] = _need(state, f"{src}{meta}.weight", used)
        gate = _need(state, f"{src}attention.gate", used)
        if i >= first:
            gates.append(gate.reshape(-1))
        else:
            report.ignored["gates of layers without a prompt (unused by the published "
                           "forward)"] += 1
    out["llm.gates"] = torch.stack(gates)  # (3Q, heads): row j = layer L-3Q+j
    report.all_gates_zero = not bool(out["llm.gates"].abs().gt(0).any())
    out[f"{_LLM}.norm.weight"] = _need(state, "llama.norm.weight", used)
    rows = torch.tensor(token_rows)
    out[f"{_LLM}.embed_tokens.trainable_tokens_delta"] = \
        _need(state, "llama.tok_embeddings.weight", used)[rows]
    output = _need(state, "llama.output.weight", used)
    if det.tied:  # the LLM ties lm_head to the embedding: nothing of its own to keep
        report.ignored["llama.output (the LLM ties it to the embedding)"] += 1
    else:
        out["llm.model.lm_head.trainable_tokens_delta"] = output[rows]
    out["llm.prefix_query.weight"] = _need(state, "prefix_query.weight", used)
    for m, pfx in ADAPTER_PREFIXES.items():
        for part, kind in product(("agg", "proj"), ("weight", "bias")):
            out[f"adapters.{m}.{part}.{kind}"] = _need(state, f"{pfx}_{part}.{kind}", used)
        kinds = ("weight", "bias") if det.legacy else ("weight",)
        for k, part, kind in product(range(1, det.adapter_blocks + 1), _BLOCK, kinds):
            out[f"adapters.{m}.blocks.{k - 1}.{part}.{kind}"] = \
                _need(state, f"{pfx}_{part}_{k}.{kind}", used)
    for key in state:
        if key.startswith("output_projector."):
            # published names are those of our first version (`.model` for the last Linear)
            out[current_name("projector." + key.removeprefix("output_projector."))] = state[key]
            used.add(key)
    for key in state:
        if key in used:
            continue
        why = next((w for p, w in _FROZEN.items() if key.startswith(p)), None)
        if why is None and re.fullmatch(r"llama\.(layers\.\d+\.(attention\.w[qkvo]|feed_forward"
                                        r"\.w[123])\.weight)", key):
            why = "frozen LLM weights (load from --llm)"
        if why is None:
            report.unknown.append(key)
        else:
            report.ignored[why] += 1
    for name, t in out.items():
        report.mapped[tensor_group(name) or "?"] += 1
        report.values += t.numel()
    return out


def convert(checkpoint: str | Path, out: str | Path, decoder: str | None = None,
            llm: str | None = None, tokenizer: str | None = None, mert: str | None = None,
            vit: str | None = None, vivit: str | None = None, decoder_path: str | None = None,
            skip_checks: bool = False, force: bool = False) -> Report:
    """Convert a published checkpoint into the model directory `out`: new, empty or a model
    directory (only our files are replaced); another non-empty directory needs `force`."""
    from m2ugen import presets
    from m2ugen.modules.llm import load_tokenizer

    check_output_dir(out, force)  # before the slow part: refuse what is not ours to write
    report = Report(source=str(checkpoint))
    state = load_published(checkpoint)
    det = detect(state)
    if decoder is not None and decoder != det.decoder:
        raise ConfigError(f"--decoder {decoder}: the checkpoint's projector makes "
                          f"{det.projector_tokens}×{det.projector_dim}, a {det.decoder} layout")
    base = presets.audioldm2() if det.decoder == "audioldm2" else _musicgen_preset(state)
    refs = {"llm": llm or base.llm, "mert": mert or base.mert, "vit": vit or base.vit,
            "vivit": vivit or base.vivit, "decoder_path": decoder_path or base.decoder_path}
    refs = {k: str(Path(v).resolve()) if Path(v).exists() else v for k, v in refs.items()}
    llm_hf = resolve_llm_path(refs["llm"])
    llm_cfg = read_config(llm_hf, "--llm")
    det.kv_heads = int(llm_cfg.get("num_key_value_heads") or det.heads)
    det.tied = bool(llm_cfg.get("tie_word_embeddings", False))
    frames = check_components(det, refs, llm_cfg, skip_checks, report.notes)
    tok = load_tokenizer(resolve_llm_path(tokenizer) if tokenizer else llm_hf,
                         M2UGenConfig().audio_tokens)
    if len(tok) != det.vocab:
        raise ConfigError(f"the checkpoint's embedding has {det.vocab} rows but the tokenizer "
                          f"with [AUD0..7] has {len(tok)}: pass the LLM's own --tokenizer")
    audio_ids = tok.convert_tokens_to_ids(M2UGenConfig().audio_tokens)
    base_vocab = int(llm_cfg["vocab_size"])
    extra = set(_changed_rows(state["llama.tok_embeddings.weight"],
                              _base_rows(llm_hf, "model.embed_tokens.weight")))
    if not det.tied:
        extra |= set(_changed_rows(state["llama.output.weight"],
                                   _base_rows(llm_hf, "lm_head.weight")))
    extra = sorted(r for r in extra if r < base_vocab and r not in audio_ids)
    report.extra_rows = len(extra)
    tensors = map_tensors(state, det, sorted(set(audio_ids) | set(extra)), report)
    config = M2UGenConfig(
        name=f"converted-{det.decoder}", tokenizer="tokenizer", decoder=det.decoder, **refs,
        llm_dim=det.llm_dim, mert_layers=det.feats["audio"][0], mert_dim=det.feats["audio"][1],
        vit_tokens=det.feats["image"][0], vit_dim=det.feats["image"][1],
        vivit_tokens=det.feats["video"][0], vivit_dim=det.feats["video"][1],
        video_frames=frames or base.video_frames, query_layers=det.query_layers,
        lora_rank=det.lora_rank, lora_alpha=det.lora_rank, extra_token_rows=extra,
        adapter_blocks=det.adapter_blocks, adapter_norm="layernorm" if det.legacy else "rmsnorm",
        # published defaults: nn.LayerNorm eps 1e-5, the adapters' RMSNorm eps 1e-6
        adapter_norm_eps=1e-5 if det.legacy else 1e-6,
        projector_tokens=det.projector_tokens, projector_dim=det.projector_dim,
        projector_width=det.projector_width, projector_layers=det.projector_layers,
        projector_ffn=det.projector_ffn,
        extra={"converted_from": str(Path(checkpoint).resolve())})
    with model_directory(out, force=force) as tmp:
        config.save(tmp)
        tok.save_pretrained(tmp / "tokenizer")
        save_tensors(tmp / TRAINED_NAME, tensors,
                     metadata={"format": "m2ugen", "version": str(config.format_version),
                               "converted_from": Path(checkpoint).name})
    report.out = str(out)
    return report


def _musicgen_preset(state: dict[str, torch.Tensor]) -> M2UGenConfig:
    """musicgen-medium when the pickled decoder is 1536 wide, else musicgen-small."""
    from m2ugen import presets

    key = "generation_model.decoder.model.decoder.layers.0.self_attn.q_proj.weight"
    if key in state and state[key].shape[0] == 1536:
        return presets.musicgen_medium()
    return presets.musicgen_small()
