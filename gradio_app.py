"""Launch the M2UGen chat app from a checkout: `m2ugen app` with the repo's example media.

    python gradio_app.py [--model DIR_OR_PRESET] [--host 127.0.0.1] [--port 7860] [--share]
                         [--max-upload-mb 200] [--concurrency 1] [--device cuda]
                         [--dtype auto|bf16|fp16|fp32]
                         [--trust-remote-code]

Defaults: the tiny preset (built on first use; an untrained smoke-test model), loopback
only, no public share link. The options are `m2ugen app`'s (m2ugen/cli); the UI lives in
m2ugen/app.py; examples/media is written on first use (m2ugen/examples.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from m2ugen.cli import main as m2ugen_main

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples" / "media"


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    return m2ugen_main(["app", "--examples-dir", str(EXAMPLES_DIR), *args])


if __name__ == "__main__":
    sys.exit(main())
