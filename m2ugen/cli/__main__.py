"""`python -m m2ugen.cli …` (torchrun launches training this way)."""

import sys

from m2ugen.cli import main

if __name__ == "__main__":
    sys.exit(main())
