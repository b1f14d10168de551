"""Remote code in the models the steps load: off unless the user passes --trust-remote-code.

A hub id or directory given to --model, --captioner, --chat-model or --encoder may carry an
`auto_map` that makes transformers import Python files shipped with the model. Those run
only with the user's explicit opt-in; otherwise the step stops with one line saying so.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from m2ugen.errors import loading


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the model run Python code shipped with it (its config's "
                        "auto_map); only for models you trust")


@contextmanager
def loading_model(what: str, name: str) -> Iterator[None]:
    """Missing files, refused pickles and refused remote code → one-line errors."""
    with loading(what, name,
                 remote_code_fix=f"rerun with --trust-remote-code if you trust {name}"):
        yield
