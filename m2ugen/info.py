"""`m2ugen info DIR`: what a model directory is made of, read from configs and file headers.

Nothing is loaded into memory: parameter counts come from safetensors headers, sizes from
the components' config files. The helpers here (component configs → feature / conditioning
shapes) are also what `m2ugen convert-original` checks a checkpoint against.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from m2ugen.checkpoint import TRAINED_NAME
from m2ugen.config import M2UGenConfig, resolve_component
from m2ugen.errors import ConfigError
from m2ugen.modules.decoders import cond_shape_from_configs
from m2ugen.modules.decoders.tuning import TUNED_TENSORS, is_tuned, read_tuned_config
from m2ugen.trained import tensor_group

COMPONENTS = ("llm", "tokenizer", "mert", "vit", "vivit", "decoder_path")


def component_dir(ref: str) -> Path | None:
    """The local directory of a component: the path itself, or its hub-cache snapshot."""
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):  # not cached / not a valid repo id
        return None


def read_config(ref: str, flag: str, subfolder: str = "") -> dict[str, Any]:
    """A component's config.json as a dict; ConfigError naming the flag when unreadable."""
    try:
        raw, _ = PretrainedConfig.get_config_dict(ref, subfolder=subfolder)
    except OSError as e:
        raise ConfigError(f"cannot read the config of {ref} (given to {flag}): "
                          f"{str(e).splitlines()[0]}; pass a local directory or a cached hub "
                          "id, or --skip-checks") from e
    return raw


def decoder_cond_shape(kind: str, ref: str) -> tuple[int, int]:
    """(tokens, width) of the conditioning the decoder takes, from its config files."""
    return cond_shape_from_configs(kind, lambda sub: read_config(ref, "--decoder-path", sub))


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor dtypes, shapes, offsets); a truncated
    or overwritten file is a ConfigError naming it."""
    def damaged(why: str) -> ConfigError:
        return ConfigError(f"{path}: damaged safetensors file ({why}); copy or download it "
                           "again (a tiny preset: delete its directory to have it rebuilt)")

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise damaged(f"{size} bytes, shorter than a header")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:  # never allocate what a damaged length field claims
            raise damaged(f"the header claims {n} bytes but the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise damaged(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise damaged("header is not a JSON object")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        ok = (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) for o in entry["data_offsets"]))
        if not ok:
            raise damaged(f"entry {name!r} has no valid shape and offsets")
        if entry["data_offsets"][1] > size - 8 - n:
            raise damaged(f"tensor {name} ends past the end of the file")
    return header


def count_params(directory: Path) -> tuple[int, int]:
    """(parameters, bytes) over every safetensors file under `directory`."""
    params = size = 0
    for f in sorted(directory.rglob("*.safetensors")):
        for info in safetensors_header(f).values():
            n = 1
            for d in info["shape"]:
                n *= d
            params += n
            size += info["data_offsets"][1] - info["data_offsets"][0]
    return params, size


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", " K", " M", " G", " T"):
        if abs(n) < 1000:
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{int(n)}{unit and ' ' + unit}"
        n /= 1000
    return f"{n:.1f} P{unit}"


def _tuned_decoder_line(folder: Path) -> str:
    """What `m2ugen train-decoder` made: how it was tuned, its tensors, its base."""
    info = read_tuned_config(folder)
    params, size = count_params(folder)
    n = len(safetensors_header(folder / TUNED_TENSORS))
    how = info["tuning"]
    if how == "lora":
        lora = info.get("lora") or {}
        how += (f" rank {lora.get('rank')} alpha {lora.get('alpha')} on "
                f"{', '.join(lora.get('targets', []))}; "
                + ("merged into the base at load" if info.get("merge", True)
                   else "kept beside the base weights"))
    return (f"  decoder fine-tuned ({how}): {n} tensors, {_human(params)} values, "
            f"{_human(size, 'B')} in {TUNED_TENSORS}; step {info.get('step')}; base "
            f"{info['base']}")


def describe(directory: str | Path) -> str:
    """A report of a model directory: components with parameter counts, trained tensors."""

    directory = Path(directory)
    config = M2UGenConfig.load(directory)
    lines = [f"model directory {directory} ({config.name}, decoder {config.decoder}, "
             f"format {config.format_version})", "components:"]
    for key in COMPONENTS:
        ref = resolve_component(getattr(config, key), directory)
        local = component_dir(ref)
        if key == "tokenizer":
            where = "local" if local else "hub (not cached)"
            lines.append(f"  {key:<13} {ref}  [{where}]")
            continue
        if local is None:
            lines.append(f"  {key:<13} {ref}  [hub id, not in the local cache: size unknown]")
            continue
        params, size = count_params(local)
        lines.append(f"  {key:<13} {ref}  {_human(params)} parameters, {_human(size, 'B')}")
    decoder_ref = resolve_component(config.decoder_path, directory)
    if is_tuned(decoder_ref):
        lines.append(_tuned_decoder_line(Path(decoder_ref)))
    c = config
    lines.append(f"sizes: llm_dim {c.llm_dim}, Q {c.query_layers}, LoRA rank {c.lora_rank} "
                 f"(alpha {c.lora_alpha}), MERT {c.mert_layers}×{c.mert_dim}, ViT "
                 f"{c.vit_tokens}×{c.vit_dim}, ViViT {c.vivit_tokens}×{c.vivit_dim}, projector "
                 f"{c.projector_tokens}×{c.projector_dim}, adapters {c.adapter_norm}")
    trained = directory / TRAINED_NAME
    if not trained.is_file():
        lines.append(f"trained tensors: none ({TRAINED_NAME} missing: the model is UNTRAINED)")
        return "\n".join(lines)
    header = safetensors_header(trained)
    groups: Counter = Counter()
    values: Counter = Counter()
    for name, info in header.items():
        n = 1
        for d in info["shape"]:
            n *= d
        group = tensor_group(name) or "unknown"
        groups[group] += 1
        values[group] += n
    total_bytes = trained.stat().st_size
    lines.append(f"trained tensors: {len(header)} ({_human(sum(values.values()))} values, "
                 f"{_human(total_bytes, 'B')} in {TRAINED_NAME})")
    lines += [f"  {g:<13} {groups[g]:>5} tensors  {_human(values[g])} values"
              for g in sorted(groups)]
    if c.extra_token_rows:
        lines.append(f"  ({len(c.extra_token_rows)} base-vocabulary token rows are trained too)")
    return "\n".join(lines)
