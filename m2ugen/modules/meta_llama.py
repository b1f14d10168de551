"""Meta-format LLaMA (`consolidated.*.pth` + `params.json` + `tokenizer.model`) → HF format.

Wherever an LLM is named, a Meta-format directory is accepted: `resolve_llm_path` converts
it once into a cache directory (LlamaForCausalLM safetensors + config + tokenizer) and
returns that directory; anything else is returned unchanged.

Layout facts (ORIGINAL_M2UGEN.md §4): model-parallel shards split wq/wk/wv/w1/w3 and
`output` along dim 0, wo/w2 and `tok_embeddings` along dim 1; norms are replicated. Meta's
wq/wk rows are in the interleaved rotary order, HF's are permuted per head:
`view(heads, head_dim/2, 2, in).transpose(1, 2)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaTokenizer

from m2ugen.checkpoint import model_directory
from m2ugen.errors import ConfigError
from m2ugen.safe_load import load_weights_only

log = logging.getLogger(__name__)

PARAMS = "params.json"
TOKENIZER = "tokenizer.model"
_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")
# merge dimension of each model-parallel weight (None: replicated, take shard 0)
_CAT_DIM: dict[str, int | None] = {
    "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0,
    "wo": 1, "w2": 1, "tok_embeddings": 1,
    "attention_norm": None, "ffn_norm": None, "norm": None,
}
# Meta name inside a layer → HF name inside a layer
LAYER_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
               "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
               "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
               "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
               "ffn_norm": "post_attention_layernorm"}
_SHARD_BYTES = 2 * 1024**3  # flush HF safetensors files at about this size


def permute_to_hf(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta (interleaved rotary) rows → HF (half-split) rows; w: (heads·hd, …) or (heads·hd,)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(heads, rows // heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def permute_to_meta(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Inverse of `permute_to_hf`: HF rows → Meta's interleaved rows."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(heads, 2, rows // heads // 2, *rest).transpose(1, 2).reshape(rows, *rest)


def shard_paths(path: Path) -> list[Path]:
    """`consolidated.NN.pth` files of a directory, in shard order (empty if none)."""
    found = [(int(m.group(1)), p) for p in path.glob("consolidated.*.pth")
             if (m := _SHARD.match(p.name))]
    return [p for _, p in sorted(found)]


def is_meta_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / PARAMS).is_file() and bool(shard_paths(path))


def _tokenizer_file(path: Path) -> Path:
    for candidate in (path / TOKENIZER, path.parent / TOKENIZER):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{path}: Meta-format LLaMA without {TOKENIZER} (looked in the directory "
                      "and its parent); copy the tokenizer.model of the download next to it")


def read_params(path: Path) -> dict[str, Any]:
    try:
        params = json.loads((path / PARAMS).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path / PARAMS}: invalid JSON ({e})") from e
    for key in ("dim", "n_layers", "n_heads"):
        if key not in params:
            raise ConfigError(f"{path / PARAMS}: missing {key!r}; not a LLaMA params.json")
    return params


def load_shards(path: Path) -> list[dict[str, torch.Tensor]]:
    """The state dicts of every shard, memory-mapped (nothing is read until used)."""
    shards = []
    for p in shard_paths(path):
        shard = load_weights_only(p)  # a refused or damaged shard: one line naming it
        if not isinstance(shard, dict) or not all(isinstance(v, torch.Tensor)
                                                  for v in shard.values()):
            raise ConfigError(f"{p}: not a Meta LLaMA shard (expected a dict of tensors, as "
                              "in the consolidated.*.pth of Meta's download)")
        shards.append(shard)
    return shards


def merge(name: str, shards: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """One Meta weight merged over its model-parallel shards."""
    kind = name.split(".")[-2]
    if kind not in _CAT_DIM:
        raise ConfigError(f"unexpected Meta LLaMA weight {name!r}")
    dim = _CAT_DIM[kind]
    if dim is None or len(shards) == 1:
        return shards[0][name]
    return torch.cat([s[name] for s in shards], dim=dim)


def hf_config(params: dict[str, Any], shards: list[dict[str, torch.Tensor]],
              tokenizer: LlamaTokenizer) -> LlamaConfig:
    """LlamaConfig from params.json; vocab and FFN width from the tensors (params may say -1)."""
    vocab = merge("tok_embeddings.weight", shards).shape[0]
    ffn = sum(s["layers.0.feed_forward.w1.weight"].shape[0] for s in shards)
    return LlamaConfig(
        vocab_size=vocab, hidden_size=params["dim"], intermediate_size=ffn,
        num_hidden_layers=params["n_layers"], num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        rms_norm_eps=params.get("norm_eps", 1e-5),
        max_position_embeddings=params.get("max_seq_len", 4096),
        rope_parameters={"rope_type": "default", "rope_theta": params.get("rope_theta", 10000.0)},
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)


def hf_tensors(shards: list[dict[str, torch.Tensor]],
               config: LlamaConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) of every weight, merged and with wq/wk rows permuted to HF order."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    yield "model.embed_tokens.weight", merge("tok_embeddings.weight", shards)
    for i in range(config.num_hidden_layers):
        for meta, hf in LAYER_NAMES.items():
            w = merge(f"layers.{i}.{meta}.weight", shards)
            if meta == "attention.wq":
                w = permute_to_hf(w, heads)
            elif meta == "attention.wk":
                w = permute_to_hf(w, kv_heads)
            yield f"model.layers.{i}.{hf}.weight", w
    yield "model.norm.weight", merge("norm.weight", shards)
    yield "lm_head.weight", merge("output.weight", shards)


def _write_safetensors(out: Path, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Write HF shards of about `_SHARD_BYTES` each plus the index (peak RAM ≈ one shard)."""
    weight_map: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        fname = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(pending, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(pending, fname))
        pending.clear()

    for name, t in tensors:
        pending[name] = t.contiguous()
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if size >= _SHARD_BYTES:
            flush()
            size = 0
    if pending:
        flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def convert_meta_llama(src: str | Path, out: str | Path) -> Path:
    """Convert a Meta-format LLaMA directory to an HF LlamaForCausalLM directory (atomic)."""
    src, out = Path(src), Path(out)
    params = read_params(src)
    tok_file = _tokenizer_file(src)
    shards = load_shards(src)
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizer class wants a folder
        shutil.copy(tok_file, Path(tmp) / TOKENIZER)
        tokenizer = LlamaTokenizer.from_pretrained(tmp)
    config = hf_config(params, shards, tokenizer)
    config.dtype = shards[0]["norm.weight"].dtype
    # the cache dir is ours by its place; config.json (what marks it done) goes in last
    with model_directory(out, force=True, commit="config.json") as tmp_out:
        _write_safetensors(tmp_out, hf_tensors(shards, config))
        config.save_pretrained(tmp_out)
        tokenizer.save_pretrained(tmp_out)
        (tmp_out / "m2ugen_source.json").write_text(json.dumps({"meta_llama": str(src)}) + "\n")
    log.info("converted Meta-format LLaMA %s to HF format in %s", src, out)
    return out


def cache_root() -> Path:
    """$M2UGEN_CACHE, else ~/.cache/m2ugen."""
    env = os.environ.get("M2UGEN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "m2ugen"


def cache_dir_for(path: str | Path) -> Path:
    """Cache directory of a Meta-format LLaMA: keyed by its resolved path, file sizes, mtimes."""
    path = Path(path).resolve()
    key = hashlib.sha256(str(path).encode())
    files = [path / PARAMS, _tokenizer_file(path), *shard_paths(path)]
    for f in files:
        st = f.stat()
        key.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_root() / "meta-llama" / key.hexdigest()[:16]


def resolve_llm_path(path: str) -> str:
    """An HF-loadable LLM reference: Meta-format dirs are converted once (cached)."""
    if not is_meta_dir(path):
        return path
    out = cache_dir_for(path)
    if not (out / "config.json").is_file():
        log.warning("converting Meta-format LLaMA %s to HF format into %s (once)", path, out)
        convert_meta_llama(path, out)
    return str(out)
