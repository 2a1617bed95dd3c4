"""The ``plural`` command: ``demo``, ``run``, ``sweep``, ``list``, ``config``, ...

Heavy modules (torch, the engine, the components) are imported by the commands that use
them, so that ``plural --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plural
from plural.config import ConfigError
from plural.discover import KIND_ALIASES, section_names
from plural.discover import REGISTRIES as REGISTRIES
from plural.registry import ALGORITHMS
from plural.report.tables import results_table
from plural.safety.imports import restricted_imports

DEMO_CONFIG: dict[str, Any] = {
    "name": "demo",
    "seed": 0,
    "rounds": 30,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 20, "alpha": 0.3, "min_samples": 30},
    "split": {"val": 0.15, "test": 0.25},
    "model": {"name": "mlp", "hidden": [64]},
    "algorithm": {"name": "fedavg"},
    "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 16, "local_epochs": 1},
    "eval": {"every": 5},
    "backend": {"threads_per_worker": 1},
}


def __getattr__(name: str) -> Any:
    if name == "SECTIONS":  # the experiment's plain sections, imported only when asked for
        from plural.discover import plain_sections

        return {("(top level)" if k == "top" else k): v for k, v in plain_sections().items()}
    raise AttributeError(f"module 'plural.cli' has no attribute {name!r}")


def demo_algorithms() -> list[str]:
    """Registered algorithms that run on the demo's federation and model."""
    return [e.name for e in ALGORITHMS if getattr(e.target, "in_demo", True)]


def demo_settings(name: str, rounds: int) -> dict[str, Any]:
    """Algorithm settings that the demo scales with its number of rounds."""
    if name == "pfedlia":  # its warm-up must leave rounds to train in clusters
        return {"warmup_rounds": min(5, rounds // 3)}
    return {}


def cmd_demo(args: argparse.Namespace) -> int:
    from plural.experiment import load_config
    from plural.runner import run

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/demo-{stamp}")
    overrides = [f"rounds={args.rounds}"] if args.rounds else []
    results = []
    names = demo_algorithms()
    config = load_config(DEMO_CONFIG, overrides)
    print(
        f"plural demo: {config.dataset.name}, {config.partition.name} "
        f"(alpha={config.partition.settings.alpha}) over "
        f"{config.partition.settings.num_clients} clients, "
        f"{config.model.name}, {config.rounds} rounds; algorithms: {', '.join(names)}"
    )
    for name in names:
        settings = ", ".join(f"{k}: {v}" for k, v in demo_settings(name, config.rounds).items())
        algorithm = f"algorithm={{name: {name}{', ' + settings if settings else ''}}}"
        cfg = load_config(config, [algorithm, f"name=demo-{name}"])
        results.append(run(cfg, out=out / name, progress=None if not args.quiet else False))
    print(
        f"\nPer-client test accuracy at round {config.rounds} (mean over clients; tails are the "
        "mean of the worst/best 10% of clients):"
    )
    print(results_table(results))
    print(
        f"\nRun files: {out}/<algorithm>/ "
        "(config.yaml, metrics.parquet, summary.json, checkpoint.pt)"
        f"\nFigures and an HTML report: plural compare {out} --out {out}/report.html"
    )
    return 0


def _tracking(args: argparse.Namespace) -> Any:
    from plural.runner.tracking import Tracking

    return Tracking(args.tensorboard, args.mlflow, args.mlflow_experiment)


def cmd_run(args: argparse.Namespace) -> int:
    from plural.experiment import load_config
    from plural.report.header import HeaderPrinter
    from plural.report.output import choose_output
    from plural.runner import run

    config = load_config(args.config, args.set or [])
    default = Path("runs") / Path(args.config).stem
    choice = choose_output(args.out, default, resume=args.resume, overwrite=args.overwrite)
    out = choice.path
    if choice.message:
        print(choice.message, file=sys.stderr)
    if args.resume and not (out / "checkpoint.pt").is_file():
        print(
            f"plural: --resume: no checkpoint in {str(out)!r}; starting a new run",
            file=sys.stderr,
        )
    tracking = _tracking(args)
    with contextlib.ExitStack() as stack:  # logging runs end FAILED if the run fails
        callbacks = [HeaderPrinter(), *(stack.enter_context(cb) for cb in tracking.callbacks())]
        results = run(
            config,
            out=out,
            resume=args.resume,
            progress=False if args.quiet else None,
            callbacks=callbacks,
        )
    print(results_table([results]))
    print(f"\nRun files: {out}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from plural.runner.diagnose import (
        diagnose,  # imports matplotlib and scikit-learn only when used
    )

    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-diagnosis"
    diagnosis = diagnose(
        args.config,
        overrides=args.set or [],
        out=out,
        warmup_rounds=args.warmup_rounds,
        probe=args.probe,
        probe_rounds=args.probe_rounds,
    )
    print(diagnosis.report())
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from plural.runner.sweep import parse_grid, parse_seeds, run_sweep

    grid = parse_grid(args.grid or [])
    seeds = parse_seeds(args.seeds)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-sweep"
    tracking = _tracking(args)
    table = run_sweep(
        args.config,
        out,
        grid,
        seeds,
        overrides=args.set or [],
        workers=args.workers,
        callbacks=tracking if tracking.enabled else None,
    )
    failed = table[table["status"] == "failed"]
    print(f"\nResults table: {out / 'results.parquet'} (and .csv), one row per cell and seed")
    if len(failed) < len(table):
        _compare([out], args.metric, args.split, None if args.no_report else out / "report.html")
    if len(failed):
        print(f"plural: {len(failed)} of {len(table)} cells failed (see the error column)")
        return 1
    return 0


def _compare(
    paths: Sequence[Path | str],
    metric: str,
    split: str,
    report: Path | None,
    baseline: str | None = None,
    at: str = "last",
) -> None:
    """Print the ranked comparison of the runs under ``paths`` (paired against ``baseline``
    when given); write the HTML report."""
    from plural.report.compare import check_choice, comparison_table, format_comparison
    from plural.report.runs import discover_runs, group_methods
    from plural.report.stats import check_round_choice, paired_tests

    methods = group_methods(discover_runs(paths))
    check_choice(metric, split, methods)
    choice = check_round_choice(at)
    paired = paired_tests(methods, baseline, metric, split, choice) if baseline else None
    table = comparison_table(methods, metric, split, choice)
    print(format_comparison(table, metric, split, paired, choice))
    if report is not None:
        from plural.report.html import write_report

        title = "plural report: " + ", ".join(str(p) for p in paths)
        path = write_report(
            methods, report, metric=metric, split=split, title=title, baseline=baseline, at=choice
        )
        print(f"\nReport: {path} (figures as PNG and SVG in {path.stem}_files/)")


def cmd_compare(args: argparse.Namespace) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report = None if args.no_report else Path(args.out or f"runs/compare-{stamp}/report.html")
    _compare(args.paths, args.metric, args.split, report, args.baseline, args.round)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from plural.runs import export

    manifest = export(args.run_dir, args.out)
    print(f"Exported the clients' models to {manifest.parent} (manifest: {manifest})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from plural.report.runs import is_run_directory

    if not is_run_directory(Path(args.run_dir)):
        raise ConfigError(
            f"{args.run_dir!r} is not a run directory (config.yaml and metrics/, as `plural run` "
            "writes); for several runs or a sweep use `plural compare`"
        )
    _compare(
        [args.run_dir],
        args.metric,
        args.split,
        Path(args.out or Path(args.run_dir) / "report.html"),
        args.baseline,
        args.round,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from plural.discover import list_text

    print(list_text(args.kind, args.name))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from plural.discover import resolved_config_text

    print(resolved_config_text(args.config, args.set or []))
    return 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _allow_import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="PACKAGE",
        help="let the config import code from PACKAGE (a model factory by import path, "
        "model: {name: 'PACKAGE.module:factory'}); a config that imports code is code, so "
        "allow only packages you trust (repeatable)",
    )


def _announce_allowed(packages: Sequence[str]) -> None:
    print(
        f"plural: the config allows importing code from: {', '.join(packages)} (allow_import)",
        file=sys.stderr,
    )


def _tracking_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensorboard",
        metavar="LOG_DIR",
        help="log per-round results to TensorBoard in LOG_DIR (extra: plural[tensorboard])",
    )
    parser.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        metavar="TRACKING_URI",
        help="log the run to MLflow: MLflow's default store, or TRACKING_URI (e.g. "
        "sqlite:///mlflow.db, http://host:5000) (extra: plural[mlflow])",
    )
    parser.add_argument(
        "--mlflow-experiment", default="plural", help="MLflow experiment name (default plural)"
    )


def _comparison_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metric", default="accuracy", help="what to rank by: accuracy (default) or loss"
    )
    parser.add_argument("--split", default="test", help="which client split (default: test)")
    parser.add_argument(
        "--baseline",
        help="a method (label or algorithm) to pair every method against: mean difference "
        "and Wilcoxon signed-rank p-values over clients and over seeds",
    )
    parser.add_argument(
        "--round",
        default="last",
        choices=["last", "best_val"],
        help="read results at each run's last evaluated round (default) or at its round of "
        "best mean validation accuracy",
    )


def _command(
    sub: Any, name: str, summary: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` has a description and examples."""
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in examples)
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plural",
        description=plural.__doc__.splitlines()[0],
        epilog="examples:\n  plural demo --rounds 10\n  plural run examples/digits_dirichlet.yaml"
        "\n  plural list algorithms\n  plural COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"plural {plural.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = _command(
        sub,
        "demo",
        "run every suitable algorithm on a built-in heterogeneous federation",
        "Run every algorithm that suits it on 20 clients of scikit-learn's digits with Dirichlet "
        "label skew (alpha 0.3), then print per-client test accuracy side by side.",
        ["plural demo", "plural demo --rounds 5 --out runs/quick-demo"],
    )
    demo.add_argument("--out", help="directory for the runs (default: runs/demo-<time>)")
    demo.add_argument("--rounds", type=int, help="override the number of rounds")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    run_cmd = _command(
        sub,
        "run",
        "run one experiment from a YAML config",
        "Run the experiment a YAML config describes. A header says what runs where; the run "
        "directory (default runs/<config name>) gets config.yaml, metrics.parquet, "
        "summary.json and a checkpoint. If the default directory already holds a run, the new "
        "run takes the next free name (-2, -3, ...); --resume continues the run, --overwrite "
        "replaces it.",
        [
            "plural run examples/digits_dirichlet.yaml",
            "plural run examples/digits_dirichlet.yaml --set rounds=5 --set algorithm=ditto",
            "plural run examples/digits_dirichlet.yaml --resume",
        ],
    )
    run_cmd.add_argument("config", help="path to the YAML config")
    run_cmd.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.lr=0.1 (repeatable)",
    )
    run_cmd.add_argument("--out", help="run directory (default: runs/<config name>)")
    run_cmd.add_argument(
        "--resume", action="store_true", help="continue from the run directory's checkpoint"
    )
    run_cmd.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in the run directory (only the files plural wrote are deleted)",
    )
    run_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    _allow_import_option(run_cmd)
    _tracking_options(run_cmd)
    run_cmd.set_defaults(func=cmd_run)

    config_cmd = _command(
        sub,
        "config",
        "print a config fully resolved, with every default filled in",
        "Validate a YAML config (with --set overrides) and print it as plural will run it: "
        "every section and every setting, defaults included.",
        [
            "plural config examples/digits_dirichlet.yaml",
            "plural config examples/digits_dirichlet.yaml --set algorithm=ditto",
        ],
    )
    config_cmd.add_argument("config", help="path to the YAML config")
    config_cmd.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting (repeatable)"
    )
    _allow_import_option(config_cmd)
    config_cmd.set_defaults(func=cmd_config)

    diag = _command(
        sub,
        "diagnose",
        "measure a federation's heterogeneity and recommend methods",
        "Measure how the config's clients differ (labels, features, gradients, drift) and "
        "recommend methods; --probe also runs the candidates briefly and ranks them.",
        [
            "plural diagnose examples/digits_dirichlet.yaml",
            "plural diagnose examples/digits_dirichlet.yaml --probe --probe-rounds 5",
        ],
    )
    diag.add_argument("config", help="path to the YAML config")
    diag.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    diag.add_argument(
        "--out", help="directory for the report and plots (default: runs/<name>-diagnosis)"
    )
    diag.add_argument(
        "--warmup-rounds",
        type=_non_negative,
        default=0,
        help="FedAvg rounds before measuring gradients and drift (default 0: the initial "
        "model, where the recommendation thresholds were calibrated)",
    )
    diag.add_argument(
        "--probe",
        action="store_true",
        help="also run the available candidate methods briefly and rank them",
    )
    diag.add_argument(
        "--probe-rounds", type=_positive, default=10, help="rounds per probe run (default 10)"
    )
    _allow_import_option(diag)
    diag.set_defaults(func=cmd_diagnose)

    sweep = _command(
        sub,
        "sweep",
        "run a config over a grid of settings and seeds (resumable)",
        "Run a config once per grid point and seed, --workers at a time (each cell's runs "
        "share its part of the cores), then rank the results. Rerunning the same command "
        "resumes the cells that did not finish.",
        [
            "plural sweep examples/digits_dirichlet.yaml --grid algorithm=fedavg,ditto --seeds 0-2",
            "plural sweep examples/digits_dirichlet.yaml --grid partition.alpha=0.1,1.0 "
            "--workers 2",
        ],
    )
    sweep.add_argument("config", help="path to the base YAML config")
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="a grid axis: a setting and its values, e.g. --grid algorithm=fedavg,ditto "
        "--grid partition.alpha=0.1,1.0 (repeatable; values are YAML, commas inside {} or [] "
        "do not split)",
    )
    sweep.add_argument(
        "--seeds", default="0", help="seeds of every grid point: 0,1,2 or 0-4 (default 0)"
    )
    sweep.add_argument(
        "--workers", type=_positive, default=1, help="cells run at once, one process each"
    )
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the base")
    sweep.add_argument("--out", help="sweep directory (default: runs/<config name>-sweep)")
    _comparison_options(sweep)
    sweep.add_argument("--no-report", action="store_true", help="skip the HTML report")
    _allow_import_option(sweep)
    _tracking_options(sweep)
    sweep.set_defaults(func=cmd_sweep)

    compare = _command(
        sub,
        "compare",
        "rank runs and sweeps side by side; write an HTML report",
        "Rank the runs and sweeps under the given folders by per-client accuracy (or loss) "
        "and write an HTML report with figures.",
        ["plural compare runs/demo-20250101-120000", "plural compare runs/a runs/b --no-report"],
    )
    compare.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_DIR_OR_SWEEP",
        help="run or sweep directories, or folders holding them",
    )
    _comparison_options(compare)
    compare.add_argument("--out", help="the HTML report (default: runs/compare-<time>/report.html)")
    compare.add_argument("--no-report", action="store_true", help="only print the table")
    compare.set_defaults(func=cmd_compare)

    report = _command(
        sub,
        "report",
        "the HTML report of one run",
        "Write the HTML report (tables and figures) of one run directory.",
        ["plural report runs/digits_dirichlet"],
    )
    report.add_argument("run_dir", help="the run directory")
    _comparison_options(report)
    report.add_argument("--out", help="the HTML report (default: RUN_DIR/report.html)")
    report.set_defaults(func=cmd_report)

    export = _command(
        sub,
        "export",
        "each client's model as safetensors, with a manifest.json",
        "Write the model each client is scored with (personal, cluster or global) as one "
        "safetensors file per client, plus manifest.json (client, which model, its accuracy).",
        ["plural export runs/digits --out models/"],
    )
    export.add_argument("run_dir", help="the run directory")
    export.add_argument("--out", required=True, help="the folder for the files")
    export.set_defaults(func=cmd_export)

    lst = _command(
        sub,
        "list",
        "every config section and component, with settings and defaults",
        "List every config section: the components of each kind (datasets, partitioners, "
        "models, algorithms, transforms) and the plain sections (split, train, sampling, eval, "
        "backend, diagnostics, ...), each setting with its type, default and meaning. Settings "
        "many algorithms share are shown once.",
        ["plural list", "plural list backend", "plural list algorithms ditto"],
    )
    lst.add_argument(
        "kind",
        nargs="?",
        metavar="SECTION",
        choices=[*section_names(), *KIND_ALIASES],
        help=f"one section: {', '.join(section_names())}",
    )
    lst.add_argument("name", nargs="?", metavar="NAME", help="one component of SECTION")
    lst.set_defaults(func=cmd_list)

    from plural.flower.cli import add_flower_commands  # imports Flower only when run

    add_flower_commands(sub)
    return parser


def _bare_optional_values(argv: Sequence[str]) -> list[str]:
    """``--mlflow CONFIG.yaml`` means MLflow's default store and the config CONFIG.yaml, not
    the tracking URI CONFIG.yaml: an option whose value is optional does not take a config
    file as its value (it becomes ``--mlflow=``)."""
    out = list(argv)
    for i, item in enumerate(out[:-1]):
        following = out[i + 1]
        if (
            item == "--mlflow"
            and "://" not in following
            and (following.lower().endswith((".yaml", ".yml")) or Path(following).is_file())
        ):
            out[i] = "--mlflow="
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line parsed (``sys.argv[1:]`` by default)."""
    argv = sys.argv[1:] if argv is None else argv
    return build_parser().parse_args(_bare_optional_values(argv))


def _is_user_error(err: Exception) -> bool:
    """Data that is missing or wrong, or a run that diverged: a message, not a traceback.
    (Their modules are imported here, once a command has run, not at start-up.)"""
    from plural.data.datasets import DataError, DatasetUnavailable
    from plural.safety.numerics import DivergedError

    return isinstance(err, (DatasetUnavailable, DataError, DivergedError))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # configs read from files import code only from the packages the user allows
        with restricted_imports(getattr(args, "allow_import", []), _announce_allowed):
            return int(args.func(args))
    except ConfigError as err:
        print(f"plural: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"plural: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = (
            "finished cells and rounds are saved; rerun the same command to continue"
            if args.command == "sweep"
            else "finished rounds are saved, continue with --resume"
        )
        print(f"plural: interrupted; {resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
