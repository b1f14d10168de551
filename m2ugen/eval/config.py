"""Which embedding and classifier models an evaluation uses, named by hub id or directory.

`standard` names the released models (downloaded by transformers on first use):

| role | model | used for |
|---|---|---|
| clap | laion/larger_clap_music | FAD-CLAP, CLAP score |
| encodec | facebook/encodec_24khz | FAD-EnCodec |
| mert | m-a-p/MERT-v1-95M (layer 12) | FAD-MERT |
| ast | MIT/ast-finetuned-audioset-10-10-0.4593 | KL, Inception Score |
| bertscore | roberta-large (layer 17) | BERTScore |

`tiny` names the offline tiny models (`tiny.py`, built on first use); a JSON file may name
any of the roles (missing ones keep the standard model), and `--clap ID` etc. override one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2ugen.errors import ConfigError
from m2ugen.eval.tiny import ROLES, ensure_tiny_eval


@dataclass(frozen=True)
class EvalModels:
    """Hub ids or directories of the models each metric runs on."""

    clap: str = "laion/larger_clap_music"
    encodec: str = "facebook/encodec_24khz"
    mert: str = "m-a-p/MERT-v1-95M"
    ast: str = "MIT/ast-finetuned-audioset-10-10-0.4593"
    bertscore: str = "roberta-large"
    mert_layer: int | None = 12  # None: the last layer
    bertscore_layer: int | None = 17  # None: the last layer
    name: str = "standard"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


STANDARD = EvalModels()
_FIELDS = {f.name for f in dataclasses.fields(EvalModels)} - {"name"}


def tiny_models() -> EvalModels:
    root = ensure_tiny_eval()
    return EvalModels(**{role: str(root / role) for role in ROLES}, mert_layer=None,
                      bertscore_layer=None, name="tiny")


def resolve_eval_models(name: str | None, overrides: dict[str, str | None] | None = None,
                        *, default: str = "standard") -> EvalModels:
    """`standard`, `tiny` or a JSON file of {role: hub id or dir}; then `overrides`."""
    name = name or default
    if name == "standard":
        models = STANDARD
    elif name == "tiny":
        models = tiny_models()
    else:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"--embeddings {name}: use standard, tiny or a JSON file naming "
                              f"the models ({', '.join(sorted(_FIELDS))})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a readable JSON file ({e})") from e
        if not isinstance(data, dict) or set(data) - _FIELDS:
            unknown = sorted(set(data) - _FIELDS) if isinstance(data, dict) else data
            raise ConfigError(f"{path}: must map roles to hub ids or directories; unknown "
                              f"{unknown}, use {', '.join(sorted(_FIELDS))}")
        for key, value in data.items():
            ok = (isinstance(value, int) and not isinstance(value, bool) or value is None) \
                if key.endswith("_layer") else isinstance(value, str) and value.strip()
            if not ok:
                want = "a layer number" if key.endswith("_layer") else "a hub id or directory"
                raise ConfigError(f"{path}: {key!r} must be {want}, got {value!r}")
        models = dataclasses.replace(STANDARD, **data, name=str(path))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return dataclasses.replace(models, **given) if given else models
