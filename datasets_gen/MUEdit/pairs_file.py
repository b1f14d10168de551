"""Reading MUEdit's `pairs.json` (written by step 02's merge) for steps 03 and 04."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets_gen.common.records import DatasetGenError

PAIRS = "pairs.json"


def read_pairs(out: Path, step: str) -> list[dict[str, Any]]:
    path = out / PAIRS
    if not path.is_file():
        raise DatasetGenError(f"{path}: missing; run 02_pairs before {step} (after sharded "
                              "runs, 02_pairs --merge writes it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetGenError(f"{path}: invalid JSON ({e}); rerun 02_pairs --merge") from e
