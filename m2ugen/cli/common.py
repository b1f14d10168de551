"""What every `m2ugen` sub-command shares: one-line argparse mistakes, option names as the
user types them, and logging that keeps library chatter off the user's terminal."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from m2ugen.errors import M2UGenError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes (an unknown option, `--seed abc`) are one line like ours,
    not a usage block; `--help` still shows the usage. Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"m2ugen: error: {message} (see `{self.prog} --help`)\n")


def flag_name(field: str) -> str:
    """A settings field as the CLI spells it: max_new_tokens → --max-new-tokens."""
    return "--" + field.replace("_", "-")


def check_attachment(path: str, flag: str) -> None:
    """The file exists and its type fits the flag (audio may come in a video container)."""
    from m2ugen.media import guess_modality

    if Path(path).is_dir():
        raise M2UGenError(f"{path}: is a directory (given to --{flag}); pass a file in it")
    if not Path(path).is_file():
        raise M2UGenError(f"{path}: file not found (given to --{flag})")
    kind = guess_modality(path)
    if kind != flag and not (flag == "audio" and kind == "video"):
        raise M2UGenError(f"{path}: looks like {'an' if kind == 'image' else 'a'} {kind} file "
                          f"but was given to --{flag}; attach it with --{kind}")


def candidate_paths(out: Path, n: int) -> list[Path]:
    """Where n rendered candidates go: OUT, then OUT-2, OUT-3 … beside it."""
    return [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(2, n + 1)]


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
