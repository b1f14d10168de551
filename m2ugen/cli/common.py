"""What every `m2ugen` sub-command shares: one-line argparse mistakes, option names as the
user types them, and logging that keeps library chatter off the user's terminal."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown option, `--seed abc`) are one line like ours,
    not a usage block; `--help` still shows the usage. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"m2ugen: error: {message} (see `{self.prog} --help`)\n")


def flag_name(field: str) -> str:
    """A settings field as the CLI spells it: max_new_tokens → --max-new-tokens."""
    return "--" + field.replace("_", "-")


def setup_logging(verbose: bool) -> None:
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="m2ugen: %(message)s", stream=sys.stderr)
    if not verbose:  # library chatter (load reports, weight-loading bars) hides our output
        from diffusers.utils import logging as diffusers_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # deprecation notices between transformers, peft and diffusers: not the user's to fix
        for module in ("transformers", "peft", "diffusers"):
            warnings.filterwarnings("ignore", category=FutureWarning, module=module)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
