"""Mutation testing of the core modules (`make mutate`): run mutmut, print the kill rates.

    python tools/mutate.py run [--modules "m2ugen/music.py ..."] [--tests "tests/x.py ..."]
                               [--jobs N] [--mutants "NAME ..."] [--sample N [--seed S]]
    python tools/mutate.py report [--modules "..."]

mutmut's configuration lives in pyproject.toml ([tool.mutmut]); it writes a mutated copy
of the package and its results under mutants/ (gitignored) and never edits m2ugen/.

`--modules` picks a subset of the core modules (files, or a folder such as
m2ugen/modules/decoders/); by default all of them. `--tests` replaces the configured test
selection for this run: a quick trial on a few test files instead of the whole suite.
mutmut first runs the selected tests once to learn which tests reach which function,
then runs, for each mutant, only the tests that reach its function (stopping at the
first failure). Changing the test selection resets mutmut's cached results.

`--sample N` runs N mutants per module drawn at random (seeded) instead of all of them:
the whole core is ~3,400 mutants at ~20 s each on 2 cores, a day of CPU, while a stratified
sample estimates every module's kill rate in an hour; the report then gives a 95 %
(Wilson) interval beside each rate. A rerun with the same seed continues the same sample
(mutants with a result are not run again); a larger N extends it.

Kill rate = killed / (mutants checked). Killed includes timeouts (the mutant hung a
test). "no tests" (no selected test reaches the line) counts as not killed: those are
gaps too. Survivors are listed with their one-line change, to fix with a test or, when
the mutant is equivalent (same behaviour), to mark `# pragma: no mutate` with a reason.

This script uses mutmut's own Python API (pinned in the Makefile: MUTMUT_VERSION) to
override the test selection and read results; a mutmut upgrade should re-check it.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
import random
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
NOT_COUNTED = {"skipped", "not checked", "check was interrupted by user"}


def core_modules() -> list[str]:
    """The files [tool.mutmut] only_mutate names, relative to the repo root, sorted."""
    from mutmut.configuration import config

    patterns = config().only_mutate
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "m2ugen").rglob("*.py"))
    return [f for f in files if any(fnmatch.fnmatch(f, pat) for pat in patterns)]


def select(modules: list[str]) -> list[str]:
    """The core module files under each requested path (all of them when none given)."""
    core = core_modules()
    if not modules:
        return core
    chosen = []
    for m in modules:
        want = m.rstrip("/")
        hits = [f for f in core if f == want or f.startswith(want + "/")]
        if not hits:
            sys.exit(f"mutate: error: {m} is not a core module; MODULES takes paths among "
                     f"{', '.join(core)} (or a folder holding some)")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def mutant_glob(path: str) -> str:
    """mutmut names a mutant `<dotted module>.x<function>__mutmut_<n>` (`__init__` left
    out), so `<dotted module>.x*` holds exactly one file's mutants."""
    dotted = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return f"{dotted}.x*"


def generate(jobs: int) -> None:
    """Write the mutated copy and the mutant lists under mutants/, as `mutmut run` does
    first (mutmut's own steps, so that a sample can be drawn from the names)."""
    from mutmut.__main__ import (
        copy_also_copy_files,
        copy_src_dir,
        create_mutants,
        set_mutant_under_test,
        setup_source_paths,
        store_lines_covered_by_tests,
    )

    set_mutant_under_test("mutant_generation")
    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    store_lines_covered_by_tests()
    create_mutants(jobs)
    set_mutant_under_test("")


def results_of(path: str) -> dict[str, int | None]:
    """Mutant name → mutmut exit code (None: not run yet) for one module."""
    from mutmut.mutation.data import SourceFileMutationData

    data = SourceFileMutationData(path=Path(path))
    data.load()
    return dict(data.exit_code_by_key)


def draw_sample(modules: list[str], n: int, seed: int) -> list[str]:
    """Up to `n` mutant names per module, drawn with `seed` (the same seed and module
    list draw the same names; a larger n draws a superset), minus those with a result."""
    todo = []
    for path in modules:
        names = sorted(results_of(path))
        chosen = random.Random(f"{seed}:{path}").sample(names, min(n, len(names)))
        done = results_of(path)
        todo += [name for name in chosen if done.get(name) is None]
    return todo


def run(modules: list[str], tests: list[str], jobs: int, mutants: list[str],
        sample: int = 0, seed: int = 0) -> None:
    """`mutmut run` over the chosen modules' mutants, or the named ones (re-checking
    survivors after adding a test). Cached results are reused only on a full run."""
    from mutmut import configuration
    from mutmut.__main__ import cli

    cfg = configuration.config()  # read from pyproject.toml in the current directory
    if tests:
        cfg.pytest_add_cli_args_test_selection = tests
    names = mutants or ([mutant_glob(m) for m in modules] if modules != core_modules() else [])
    start = time.monotonic()
    if sample and not mutants:
        generate(jobs)
        names = draw_sample(modules, sample, seed)
        print(f"mutate: a sample of {sample} mutants per module (seed {seed}): "
              f"{len(names)} still to run")
        if not names:
            return
    try:
        cli.main(["run", "--max-children", str(jobs), *names], standalone_mode=False)
    except SystemExit as e:  # mutmut exits 1 when the clean test run fails, for one
        if e.code:
            raise
    # mutmut's own per-mutant durations are 0 under process_isolation = "forkserver"
    print(f"\nmutmut run: {time.monotonic() - start:.0f} s wall (stats and clean runs "
          "included; mutmut's mutations/second line above is the per-mutant rate)")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (sound for small samples and rates
    near 1, unlike the normal approximation)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(killed: int, checked: int, mutants: int) -> str:
    """'93.0 %', plus the 95 % interval when only a sample of the mutants was checked."""
    if not checked:
        return "-"
    text = f"{100 * killed / checked:.1f} %"
    if checked < mutants:
        low, high = wilson(killed, checked)
        text += f" [{100 * low:.0f}-{100 * high:.0f}]"
    return text


def report(modules: list[str]) -> int:
    """Print the per-module table and the survivors; returns the number of survivors."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    rows, survivors = [], []
    for path in modules:
        data = SourceFileMutationData(path=path)
        data.load()
        status = {k: status_by_exit_code[v] for k, v in data.exit_code_by_key.items()}
        counts = Counter(status.values())
        checked = sum(n for s, n in counts.items() if s not in NOT_COUNTED)
        killed = sum(counts[s] for s in KILLED)
        rows.append((path, len(status), checked, killed, counts["survived"],
                     counts["no tests"], counts["timeout"], _rate(killed, checked, len(status))))
        survivors += [(path, k, s) for k, s in sorted(status.items())
                      if s not in KILLED | NOT_COUNTED]
    head = ("module", "mutants", "checked", "killed", "survived", "no tests", "timeout",
            "kill rate")
    total = [sum(r[i] for r in rows) for i in range(1, 7)]
    rate = _rate(total[2], total[1], total[0])
    table = [head, *rows, ("total", *total, rate)]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    if not total[1]:
        print("\nno results yet: `make mutate` runs the mutants (MODULES=... for a subset)")
    if survivors:
        print(f"\n{len(survivors)} not killed (show one: .venv/bin/mutmut show NAME):")
    for path, name, status in survivors:
        try:
            diff = get_diff_for_mutant(name, path=path).splitlines()
        except Exception as e:  # a report line: say why, and go on with the others
            diff = [f"+ (diff unavailable: {e})"]
        changed = [d for d in diff[2:] if d[:1] in "-+"]
        print(f"  {status:9} {name}")
        for line in changed[:4]:
            print(f"      {line.strip()[:110]}")
    return len(survivors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--modules", default="",
                        help="core module files or folders, space-separated (default: all)")
    parser.add_argument("--tests", default="",
                        help="pytest paths and options replacing the configured selection")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel")
    parser.add_argument("--mutants", default="",
                        help="mutant names or globs to (re)run, e.g. survivors of a report")
    parser.add_argument("--sample", type=int, default=0,
                        help="run N mutants per module drawn at random (0: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # mutmut reads pyproject.toml and keeps mutants/ in the working directory
    modules = select(args.modules.split())
    if args.command == "run":
        run(modules, shlex.split(args.tests), args.jobs, args.mutants.split(), args.sample,
            args.seed)
        print()
    report(modules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
