"""`m2ugen eval`: a model on a task, a folder of music, or a table of earlier runs.

Every check that needs no model comes first (numbers, the device, the data file and its
records, an output folder that holds another run), so a mistake costs a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from m2ugen.cli.common import flag_name
from m2ugen.errors import ConfigError, check_number, check_seed

_ROLES = ("clap", "encodec", "mert", "ast", "bertscore")


def _overrides(args: argparse.Namespace) -> dict[str, str | None]:
    return {role: getattr(args, role) for role in _ROLES}


def _metrics(args: argparse.Namespace) -> list[str] | None:
    if args.metrics is None:
        return None
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not names:  # an empty list would mean every metric
        raise ConfigError(f"--metrics {args.metrics!r}: names no metric; give comma-separated "
                          "names as in results.json (e.g. kl,clap_score), or drop --metrics")
    return names


def _print_summary(results: dict, out: Path) -> None:
    run = out / results["label"]
    from m2ugen.eval.report import number

    values = ", ".join(f"{spec['label']} {number(name, spec['value'])}"
                       for name, spec in results["metrics"].items())
    print(f"{results['task']} · {results['label']} · {results['num_items']} items: {values}")
    for name, why in results["metrics_not_computed"].items():
        print(f"not computed: {name} ({why})")
    print(f"wrote {run / 'results.json'}, {run / 'plot.png'} and {out / 'table.md'}")


def _settings(args: argparse.Namespace) -> dict:
    check_seed(args.seed, "--seed")
    for name, kw in (("seconds", {"above": 0.0, "maximum": 300.0}),
                     ("guidance", {"minimum": 0.0, "maximum": 100.0}),
                     ("max_new_tokens", {"integer": True, "minimum": 1}),
                     ("temperature", {"minimum": 0.0}),
                     ("top_p", {"above": 0.0, "maximum": 1.0}),
                     ("batch_size", {"integer": True, "minimum": 1, "maximum": 256})):
        setattr(args, name, check_number(getattr(args, name), flag_name(name), **kw))
    if args.steps is not None:
        check_number(args.steps, "--steps", integer=True, minimum=1, maximum=1000)
    edit = {}
    if getattr(args, "source", None) is not None:  # the edit task's options
        edit["source"] = args.source
        if args.edit_strength is not None:
            edit["edit_strength"] = check_number(args.edit_strength, "--edit-strength",
                                                 above=0.0, maximum=1.0)
    return {"seed": args.seed, "seconds": args.seconds, "guidance": args.guidance,
            "steps": args.steps, "scheduler": args.scheduler, "condition": args.condition,
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_p": args.top_p, **edit}


def cmd_eval(args: argparse.Namespace) -> int:
    from m2ugen.eval.run import model_label

    if args.task == "report":
        return _cmd_report(args)
    if args.task == "folder":
        return _cmd_folder(args)
    from m2ugen.eval.run import ModelRun, evaluate_model

    if args.limit is not None:
        check_number(args.limit, "--limit", integer=True, minimum=1)
    settings = _settings(args)
    models = args.model or ["tiny"]
    labels = [model_label(m) for m in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--model: two models share the folder name {labels!r}; rename one "
                          "of the directories (results are kept per name under --out)")
    out = args.out or Path("eval_results") / args.task
    args.written = out
    for model in models:
        results = evaluate_model(ModelRun(
            task=args.task, model=model, data=args.data, out=out, root=args.root,
            reference_root=args.reference_root, limit=args.limit, device=args.device,
            embeddings=args.embeddings, model_overrides=_overrides(args),
            metrics=_metrics(args), skip_bad=args.skip_bad,
            trust_remote_code=args.trust_remote_code, dtype=args.dtype, settings=settings))
        _print_summary(results, out)
    return 0


def _cmd_folder(args: argparse.Namespace) -> int:
    from m2ugen.eval.run import FolderRun, evaluate_folder

    check_seed(args.seed, "--seed")
    out = args.out or Path("eval_results") / "folder"
    args.written = out
    results = evaluate_folder(FolderRun(
        generated=args.generated, reference=args.reference, out=out, captions=args.captions,
        sources=args.sources, label=args.label, device=args.device, embeddings=args.embeddings,
        model_overrides=_overrides(args), metrics=_metrics(args), seed=args.seed))
    _print_summary(results, out)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from m2ugen.eval.report import comparison_table, read_results, write_plot, write_table

    runs = [r for folder in args.results for r in read_results(folder)]
    if args.out is None:
        print(comparison_table(runs), end="")
        return 0
    args.written = args.out
    write_table(args.out, runs)
    plot = write_plot(args.out.with_suffix(".png"), runs)
    print(f"wrote {args.out}" + (f" and {plot}" if plot else ""))
    return 0
