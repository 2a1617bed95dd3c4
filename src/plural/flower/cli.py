"""``plural flower ...``: run a config in Flower's simulation engine, prepare a deployment."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from plural.config import ConfigError

APP_PYPROJECT = """\
# A Flower App that runs a plural config (written by `plural flower app`).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
dependencies = []  # plural[flower] is installed on every machine; nothing is installed at run time

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "plural"

[tool.flwr.app.components]
serverapp = "plural.flower.app:server"
clientapp = "plural.flower.app:client"

[tool.flwr.app.config]
config = "{config}"
out = "{out}"
timeout = {timeout}
wait-for-nodes = {wait}
secagg = {secagg}
"""


def cmd_flower_run(args: argparse.Namespace) -> int:
    from plural.flower.server import FlowerOptions, simulate
    from plural.report.tables import results_table

    options = FlowerOptions(args.timeout, secagg=args.secagg)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    results = simulate(
        args.config, out, overrides=args.set or [], nodes=args.nodes, options=options
    )
    print(results_table([results]))
    print(f"\nRun files: {out}")
    return 0


def cmd_flower_export(args: argparse.Namespace) -> int:
    from plural.experiment import load_config
    from plural.flower.data import export_clients
    from plural.runner import build_federation

    cfg = load_config(args.config, args.set or [])
    paths = export_clients(build_federation(cfg), args.folder)
    print(f"{len(paths)} client data specs in {args.folder} (client-K.npz)")
    return 0


def write_app(
    folder: str | Path,
    config: str | Path,
    out: str | Path,
    *,
    timeout: float = 0,
    wait_for_nodes: float = 120,
    secagg: bool = False,
) -> Path:
    """A Flower App folder (``pyproject.toml``) whose ServerApp runs ``config`` into ``out``;
    refuses to overwrite an existing ``pyproject.toml``."""
    folder = Path(folder)
    target = folder / "pyproject.toml"
    if target.exists():
        raise ConfigError(f"flower app: {target} exists; give a new folder")
    from plural.experiment import load_config

    cfg = load_config(config)
    from plural.flower.secagg import check_secagg

    check_secagg(cfg, secagg)
    folder.mkdir(parents=True, exist_ok=True)
    name = "".join(ch if ch.isalnum() else "-" for ch in cfg.name.lower()).strip("-") or "plural"
    target.write_text(
        APP_PYPROJECT.format(
            name=f"plural-{name}",
            config=Path(config).resolve().as_posix(),
            out=Path(out).resolve().as_posix(),
            timeout=float(timeout),
            wait=float(wait_for_nodes),
            secagg=str(secagg).lower(),
        )
    )
    return target


def cmd_flower_app(args: argparse.Namespace) -> int:
    out = args.out or str(Path("runs") / Path(args.config).stem)
    target = write_app(args.folder, args.config, out, timeout=args.timeout or 0, secagg=args.secagg)
    print(f"Flower App: {target}; start it with: flwr run {args.folder} <superlink connection>")
    return 0


def _set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting (repeatable)"
    )


def add_flower_commands(sub: Any) -> None:
    """``plural flower run | export | app``."""
    flower = sub.add_parser(
        "flower",
        help="run plural configs with Flower (plural[flower])",
        description="Run a plural config with Flower: in Flower's simulation engine (run), or "
        "prepare a deployment on real machines: one data spec per client (export) and a Flower "
        "App folder for `flwr run` (app). The README's Flower section has the deployment steps.",
        epilog="examples:\n  plural flower run examples/digits_dirichlet.yaml\n"
        "  plural flower export examples/digits_dirichlet.yaml client-data/\n"
        "  plural flower app examples/digits_dirichlet.yaml my-app/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = flower.add_subparsers(dest="flower_command", required=True)

    run = commands.add_parser("run", help="run a config in Flower's simulation engine")
    run.add_argument("config", help="path to the YAML config")
    _set_option(run)
    run.add_argument("--out", help="run directory (default: runs/<config name>)")
    run.add_argument("--nodes", type=int, help="virtual SuperNodes (default: clients, <= cores)")
    run.add_argument("--timeout", type=float, help="seconds to wait for a node's reply")
    run.add_argument("--secagg", action="store_true", help="Flower's SecAgg+ for the updates")
    run.set_defaults(func=cmd_flower_run)

    export = commands.add_parser(
        "export", help="write each client's data to FOLDER/client-K.npz (one data spec per node)"
    )
    export.add_argument("config", help="path to the YAML config")
    export.add_argument("folder", help="an empty or new folder")
    _set_option(export)
    export.set_defaults(func=cmd_flower_export)

    app = commands.add_parser("app", help="write a Flower App folder that runs a config")
    app.add_argument("config", help="path to the YAML config (on the server machine)")
    app.add_argument("folder", help="a new folder for the app's pyproject.toml")
    app.add_argument("--out", help="run directory on the server (default: runs/<config name>)")
    app.add_argument("--timeout", type=float, help="seconds to wait for a node's reply")
    app.add_argument("--secagg", action="store_true", help="Flower's SecAgg+ for the updates")
    app.set_defaults(func=cmd_flower_app)
