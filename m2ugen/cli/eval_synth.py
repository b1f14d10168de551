"""`m2ugen eval synth`: a model's answers and music requests on held-out synthetic data
(m2ugen/eval/synth.py). Numbers and the device are checked before the model loads."""

from __future__ import annotations

import argparse

from m2ugen.errors import ConfigError, check_device, check_number, check_seed


def cmd_eval_synth(args: argparse.Namespace) -> int:
    from m2ugen.data.synth import MAX_ITEMS
    from m2ugen.eval.synth import evaluate_synth, format_table, write_results
    from m2ugen.model import M2UGen

    check_seed(args.seed, "--seed")
    n = check_number(args.n, "--n", integer=True, minimum=2, maximum=MAX_ITEMS)
    check_device(args.device, "--device")
    if args.data is not None and not (args.data / "mucaps.json").is_file():
        raise ConfigError(f"{args.data}: not a `m2ugen synth-data` directory (no mucaps.json); "
                          "write one with `m2ugen synth-data DIR --seed N`")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"{args.out}: is a file; --out takes a directory")
    model = M2UGen.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                   trust_remote_code=args.trust_remote_code)
    results = evaluate_synth(model, data=args.data, seed=args.seed, n=n, label=args.model)
    results["dtype"] = str(model.dtype).removeprefix("torch.")
    write_results(results, args.out)
    print(format_table(results))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'table.md'}")
    return 0
