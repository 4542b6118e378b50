"""Day-to-day commands: `dataflux schedule`, `server`, `trigger`, `report` and `diff`.

`cli.main` calls `register(subparsers)`; each command is a thin wrapper over flows/deploy.py
(Prefect side) or dataflux/report (catalog side). flows/deploy.py is imported inside the commands:
it imports prefect, seconds of start-up that the other commands skip, and only after
`flows.prefect_env` has set Prefect's defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli.catalog_choice import open_catalog_for_reading
from dataflux.config import demo_config, load_config
from dataflux.home import config_file
from dataflux.report import write_report
from dataflux.report.diff import diff_versions, format_diff
from flows import prefect_env


def _config(args):
    named = config_file(args.config)  # the one rule for every command (dataflux.home)
    return load_config(named) if named else demo_config()


def _refusing(fn):
    """Run a command; a ServeError (no server, no training flow, bad preset) is a message, not a traceback."""
    def run(args) -> int:
        from flows.deploy import ServeError  # lazy: imports prefect (see the module's docstring)

        try:
            return fn(args)
        except ServeError as exc:
            print(f"dataflux {args.command}: error: {exc}", file=sys.stderr)
            return 2
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


@_refusing
def cmd_schedule(args) -> int:
    prefect_env.apply(prefect_env.SERVER)
    from flows.deploy import schedule_deployments, serve_deployments, training_deployment  # lazy: imports prefect

    config = _config(args)
    deployments = schedule_deployments(config, cron=args.cron)
    with_training = args.with_training or bool(config.data["training"].get("on_finalize"))
    for d, entry in zip(deployments, config.data.get("schedules") or []):
        cron = args.cron or entry["cron"]
        print(f"deployment scheduled-synthesis/{d.name}: cron {cron!r}"
              f"{' (' + entry['timezone'] + ')' if entry.get('timezone') else ''}, "
              f"sources {entry.get('sources') or 'all'}")
    if with_training:
        train = training_deployment(config, preset=args.preset, overrides=args.set)
        deployments.append(train)
        print(f"deployment {train.flow_name}/{train.name}: on every dataflux.version.finalized event "
              f"of {config.catalog_path}, preset {args.preset or config.data['training'].get('preset')}")
    if not deployments:
        print("no deployments: add `schedules:` to the config or pass --with-training", file=sys.stderr)
        return 2
    if not args.serve:
        print("(dry run: pass --serve to register these deployments and run them from this process)")
        return 0
    print(f"serving {len(deployments)} deployment(s) on {os.environ.get('PREFECT_API_URL')}; Ctrl-C stops")
    serve_deployments(deployments, query_seconds=args.query_seconds)
    return 0


@_refusing
def cmd_trigger(args) -> int:
    prefect_env.apply(prefect_env.SERVER)
    from flows.deploy import serve_deployments, training_deployment  # lazy: imports prefect

    config = _config(args)
    deployment = training_deployment(config, preset=args.preset, overrides=args.set)
    print(f"training deployment {deployment.flow_name}/{deployment.name}: runs on each finalized version of "
          f"{config.catalog_path}; Ctrl-C stops")
    serve_deployments([deployment], query_seconds=args.query_seconds)
    return 0


def cmd_server(args) -> int:
    from flows.deploy import LocalServer, server_env  # lazy: imports prefect

    server = LocalServer(host=args.host, port=args.port)
    print(f"Prefect UI: {server.url}\nIn other shells: export PREFECT_API_URL={server.api_url}\n"
          "Then e.g. `dataflux schedule --serve --with-training`. Ctrl-C stops the server.", flush=True)
    try:
        return subprocess.call(server.command(), env=server_env())
    except KeyboardInterrupt:
        return 0


def cmd_report(args) -> int:
    catalog = open_catalog_for_reading(args)
    out = args.out or os.path.join("reports", args.version)
    files = write_report(catalog, args.version, out, copy_shards=args.copy_shards)
    print(f"report:       {files.html}\ndataset card: {files.card}"
          + (f"\nshards:       {len(files.data)} copied to {files.card.parent / 'data'}" if files.data else ""))
    return 0


def cmd_diff(args) -> int:
    result = diff_versions(open_catalog_for_reading(args), args.v1, args.v2)
    print(json.dumps(result, indent=2, default=str) if args.json else format_diff(result))
    return 0


def register(sub) -> None:
    """Add the operations commands to the `dataflux` CLI's subparsers."""
    p = sub.add_parser("schedule", help="cron deployments from `schedules:` in data_catalog.yaml")
    p.add_argument("--config", help="data catalog (default ./data_catalog.yaml, else the demo)")
    p.add_argument("--serve", action="store_true", help="register the deployments and run them from this process")
    p.add_argument("--with-training", action="store_true",
                   help="also serve the training deployment that runs on every finalized version")
    p.add_argument("--preset", help="training preset (default: training.preset of the config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="training preset override, e.g. train.max_steps=200 (repeatable)")
    p.add_argument("--cron", help="override every schedule's cron expression, e.g. '* * * * *'")
    p.add_argument("--query-seconds", type=float, default=1.0, help="how often the runner polls for runs")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("trigger", help="serve the training deployment that runs on every finalized version")
    p.add_argument("--config")
    p.add_argument("--preset")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--query-seconds", type=float, default=1.0)
    p.set_defaults(func=cmd_trigger)

    p = sub.add_parser("server", help="start a local Prefect server with its UI")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4200)
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("report", help="HTML report with plots and a dataset card for a version")
    p.add_argument("version")
    p.add_argument("--out", help="output directory (default reports/VERSION)")
    p.add_argument("--copy-shards", action="store_true", help="copy the shards to OUT/data/ (a datasets repo)")
    p.add_argument("--config")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diff", help="compare two versions: samples added/removed/changed, per category")
    p.add_argument("v1")
    p.add_argument("v2")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)
