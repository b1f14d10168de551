"""Shared by the hostile tests: a user's mistake through the CLI is one line, exit 2."""

from __future__ import annotations

import pytest

from m2ugen.cli import main


@pytest.fixture
def one_line_error(capsys):
    """`one_line_error(ARGV)` runs `m2ugen ARGV`, asserts exit 2 with one `m2ugen: error:`
    line (no traceback) and returns that line."""

    def run(argv: list[str]) -> str:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's refusals exit (the console script's way too)
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("m2ugen: error: ")]
        assert len(lines) == 1 and err.count("\n") == 1, err
        return lines[0]

    return run
