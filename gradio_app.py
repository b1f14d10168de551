"""Launch the M2UGen chat app (the UI lives in m2ugen/app.py).

    python gradio_app.py [--model DIR_OR_PRESET] [--host 127.0.0.1] [--port 7860] [--share]
                         [--max-upload-mb 200] [--trust-remote-code]

Defaults: the tiny preset (built on first use; an untrained smoke-test model), loopback
only, no public share link.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples" / "media"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from m2ugen.cli import OneLineParser  # mistakes are one line, as in `m2ugen`

    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny",
                   help="model directory or preset (default: tiny, an untrained smoke-test model)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default loopback; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload accepted")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a MERT whose config needs its own Python code (auto_map) run "
                        "that code; only for model directories you trust")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from m2ugen.cli import setup_logging

    setup_logging(verbose=False)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests
    from m2ugen.app import Limits, build_app, check_port, launch
    from m2ugen.errors import M2UGenError, check_device, check_number

    try:  # everything that needs no model first: a mistake costs a second, not a load
        check_number(args.max_upload_mb, "--max-upload-mb", above=0.0)
        check_device(args.device, "--device")
        check_port(args.host, args.port)
    except M2UGenError as e:
        print(f"m2ugen: error: {e}", file=sys.stderr)
        return 2
    if not EXAMPLES_DIR.is_dir():  # the example media are generated, never downloaded
        sys.path.insert(0, str(EXAMPLES_DIR.parent))
        from make_examples import main as make_examples

        make_examples(EXAMPLES_DIR)
    try:
        demo = build_app(args.model, device=args.device,
                         trust_remote_code=args.trust_remote_code,
                         limits=Limits(max_upload_mb=args.max_upload_mb),
                         examples_dir=EXAMPLES_DIR)
        launch(demo, host=args.host, port=args.port, share=args.share,
               max_upload_mb=args.max_upload_mb, examples_dir=EXAMPLES_DIR)
    except M2UGenError as e:
        print(f"m2ugen: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
