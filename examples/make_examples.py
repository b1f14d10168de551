"""Write the small example media the demo and the app use (nothing is downloaded).

    python examples/make_examples.py [OUT_DIR]     (default: examples/media)

The generator is `m2ugen.examples.make_examples`; its docstring lists the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from m2ugen.examples import make_examples


def main(out: Path) -> None:
    make_examples(out)
    print(f"wrote example media to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "media")
