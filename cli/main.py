"""The `dataflux` command line.

The data commands (demo, run, versions, stats, sql, verify, runs) live here; the modules beside
this one add theirs (`train`/`generate`, `eval`, `llm serve`, and schedule/trigger/server/report/diff).
flows.synthesize is imported inside the commands that run it: it imports prefect, seconds of
start-up that `dataflux versions` or `--help` should not pay, and only after `flows.prefect_env`
has set Prefect's defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cli import errors
from cli import eval as eval_command
from cli import llm as llm_command
from cli import ops as ops_commands
from cli import train as train_commands
from cli.catalog_choice import open_catalog
from dataflux.config import demo_config, load_config
from dataflux.storage.catalog import DEFAULT_ROW_LIMIT, Catalog
from dataflux.storage.row_schema import TASKS
from dataflux.storage.writer_lock import writer_lock_held
from flows import prefect_env


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, sort_keys=False))


def cmd_demo(args) -> int:
    prefect_env.apply()
    from flows.synthesize import run_synthesis, unverified  # lazy: imports prefect (see above)

    config = demo_config(size=args.size, seed=args.seed, error_rate=args.error_rate, partitions=args.partitions,
                         tasks=_demo_tasks(args.tasks))
    if args.unverified:
        config = unverified(config)
    print(f"DataFlux demo: {args.size} synthesized clips (planted wrong labels: {args.error_rate:.0%})"
          f"{', verification off' if args.unverified else ''}; state in {config.home}")
    summary = run_synthesis(config, name="demo-unverified" if args.unverified else "demo", progress=not args.quiet,
                            allow_empty=args.allow_empty, **_wait_args(args))
    if summary.get("status") != "completed":
        print(f"run {summary['run_id']} did not complete ({summary['status']}); rerun `dataflux demo` to resume",
              file=sys.stderr)
        return 1
    if _refused_empty(args, summary):
        return 2
    stats = Catalog(config.catalog_path, read_only=True).stats(summary["version"])
    _print_stats(summary["version"], stats)
    return 0


def plant_on_sources(config, names: list[str], rate: float) -> None:
    """`--plant-errors RATE`: the `plant_errors` option on every chosen source (the demo plants its own)."""
    if not 0.0 <= rate <= 1.0:
        raise SystemExit(f"--plant-errors: {rate} is not a fraction within 0..1")
    for name in names:
        spec = config.sources.get(name)
        if spec is not None and spec.get("kind") != "demo":
            spec["plant_errors"] = rate


def _refused_empty(args, summary: dict[str, Any]) -> bool:
    """Whether the run made a version without rows and no `--allow-empty` was given; if so, says why on one
    line of stderr (the version stays a draft)."""
    empty = summary.get("empty")
    if empty is None or args.allow_empty:
        return False
    reasons = ", ".join(f"{r}={n}" for r, n in empty["top_rejects"].items())
    why = f"all {empty['items']} items rejected (most: {reasons})" if reasons else f"{empty['items']} items, none kept"
    print(f"dataflux {args.command}: error: version {summary['version']} has no rows: {why}; it stays a draft: "
          f"see `dataflux stats {summary['version']}`, fix the source or its taxonomy, "
          f"or pass --allow-empty to finalize it empty", file=sys.stderr)
    return True


def _wait_args(args) -> dict[str, Any]:
    return {"wait": args.wait, "wait_timeout_s": args.wait_timeout}


def _add_allow_empty_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-empty", action="store_true",
                   help="finalize the version even if every item was rejected (default: it stays a draft, exit 2)")


def _add_wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="if another run is writing the same catalog, wait for it instead of refusing")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                   help="with --wait: give up after this many seconds (default: no limit)")


def _demo_tasks(text: str | None) -> list[str] | None:
    """`--tasks all` or a comma list (mcq,asr,...) -> the task list; None keeps the default (mcq)."""
    if not text:
        return None
    return list(TASKS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]


def cmd_run(args) -> int:
    prefect_env.apply()
    from flows.synthesize import run_synthesis, unverified  # lazy: imports prefect (see above)

    config = load_config(args.config)
    if args.plant_errors is not None:
        plant_on_sources(config, args.source or list(config.sources), args.plant_errors)
    if args.unverified:
        config = unverified(config)
    summary = run_synthesis(config, sources=args.source or None, version=args.version, name=args.name,
                            finalize=not args.no_finalize, progress=not args.quiet, reuse=not args.no_reuse,
                            allow_empty=args.allow_empty, **_wait_args(args))
    _print_json(summary) if args.json else print(
        f"{summary['version']}: {summary['status']}, {summary['rows']} rows, {summary['rejects']} rejects"
        + (" (finalized)" if "finalized" in summary else ""))
    if summary["status"] != "completed":
        return 1
    return 2 if _refused_empty(args, summary) else 0


def cmd_versions(args) -> int:
    versions = open_catalog(args, read_only=True).list_versions()
    if args.json:
        _print_json(versions)
        return 0
    if not versions:
        print("no versions yet: run `dataflux demo` or `dataflux run`")
    for v in versions:
        print(f"{v['version_id']:<28} {v['status']:<10} rows={v.get('n_rows') or 0:<7} "
              f"rejects={v.get('n_rejects', 0):<6} created={v.get('created_at')}"
              + (" UNVERIFIED" if (v.get("notes") or {}).get("verified") is False else ""))
    return 0


def _print_stats(version: str, stats: dict) -> None:
    print(f"\nversion {version} ({stats.get('status', '')}"
          f"{', UNVERIFIED: questions kept as written' if stats.get('verified') is False else ''}): "
          f"{stats.get('rows', 0)} samples")
    if stats.get("shards_verified") is False:
        print("  shards NOT verified: a draft's files are read as they are; finalize it to check them")
    if len(stats.get("rows_per_task") or {}) > 1:
        print("  rows_per_task: " + ", ".join(f"{k}={v}" for k, v in stats["rows_per_task"].items()))
    for key in ("samples_per_category", "rejects_by_reason", "answer_position"):
        if stats.get(key):
            print(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in stats[key].items()))
    q = stats.get("questions_per_clip")
    if q and q.get("histogram"):
        print(f"  questions_per_clip: mean {q['mean']:.2f}, min {q['min']}, max {q['max']}; "
              + ", ".join(f"{n} q: {c} clips" for n, c in q["histogram"].items()))
    for src, cats in (stats.get("categories_per_source") or {}).items():
        print(f"  categories of {src}: {len(cats)} (" + ", ".join(f"{k}={v}" for k, v in cats.items()) + ")")
    if stats.get("duration_s"):
        d = stats["duration_s"]
        print("  duration_s: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items()))
    for key in ("planted_errors", "planted_caught", "clean_items", "clean_rejected", "cost_usd"):
        if key in stats and stats[key] is not None:
            print(f"  {key}: {stats[key]}")
    for leaf, counts in (stats.get("verification_by_leaf") or {}).items():
        print(f"  verified {leaf}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for leaf, d in (stats.get("planted_by_leaf") or {}).items():
        print(f"  planted {leaf}: caught {d.get('caught', 0)} of {d.get('planted', 0)}; "
              f"clean lost {d.get('clean_rejected', 0)} of {d.get('clean_asked', 0)}")
    blind = stats.get("text_answerable") or {}
    if blind.get("asked"):
        print(f"  answerable without the audio (audio_needed=false): {blind['text_answerable']} of {blind['asked']} "
              f"({blind['share']:.1%}); " + ", ".join(f"{leaf}={d['text_answerable']}/{d['asked']}"
                                                    for leaf, d in blind["by_leaf"].items()))
    model = stats.get("model_accuracy")
    if model:
        print(f"  our model's accuracy: {model['accuracy']:.1%} of {model['n']} questions; " + ", ".join(
            f"{c}={d['accuracy']:.1%}" for c, d in model["by_category"].items()))
    if stats.get("planted_errors"):
        caught = stats["planted_caught"] / stats["planted_errors"]
        rejected = stats["clean_rejected"] / max(1, stats["clean_items"])
        print(f"  planted errors caught: {caught:.1%}; clean items rejected: {rejected:.1%}")


def cmd_stats(args) -> int:
    stats = open_catalog(args, read_only=True).stats(args.version)
    _print_json(stats) if args.json else _print_stats(args.version, stats)
    return 0


def cmd_sql(args) -> int:
    """Rows are printed as they stream from the catalog, at most --limit of them (0: all)."""
    if args.limit < 0:
        raise ValueError(f"--limit {args.limit}: give a number of rows, or 0 for all")
    with open_catalog(args, read_only=True).stream(args.query, limit=args.limit or None) as result:
        rows = (row for batch in result.batches() for row in batch.to_pylist())
        if args.json:
            _print_json_rows(rows)
        else:
            print("\t".join(result.columns))
            for r in rows:
                print("\t".join("" if v is None else str(v) for v in r.values()))
    if result.cut:
        print(f"({result.cut} more rows not shown: raise --limit, or --limit 0 for all)", file=sys.stderr)
    return 0


def _print_json_rows(rows) -> None:
    """`_print_json` of a list of rows, printed one row at a time."""
    first = True
    for row in rows:
        item = "\n".join("  " + line for line in json.dumps(row, indent=2, default=str).splitlines())
        print(("[\n" if first else ",\n") + item, end="")
        first = False
    print("[]" if first else "\n]")


def cmd_runs(args) -> int:
    """Runs, oldest first. A run recorded `running` while no process holds the catalog's writer lock
    died without finishing: it is shown as `interrupted` (the next run records it so)."""
    catalog = open_catalog(args, read_only=True)
    runs = [{"run_id": r, "version_id": v, "status": st, "started_at": s0, "ended_at": s1}
            for r, v, st, s0, s1 in catalog._fetch(
                "SELECT run_id, version_id, status, started_at, ended_at FROM runs ORDER BY started_at")]
    if not writer_lock_held(catalog.path):
        for run in runs:
            if run["status"] == "running":
                run["status"] = "interrupted"
    if args.json:
        _print_json(runs)
        return 0
    for run in runs:
        print(f"{run['run_id']:<18} {run['version_id'] or '':<24} {run['status']:<16} "
              f"started={run['started_at']} ended={run['ended_at'] or '-'}")
    return 0


def cmd_verify(args) -> int:
    problems = open_catalog(args, read_only=True).verify(args.version)
    if problems:
        for p in problems:
            print(f"MISMATCH {p}", file=sys.stderr)
        print(f"version {args.version}: {len(problems)} problem(s)", file=sys.stderr)
        return 2
    print(f"version {args.version}: all shards match their recorded sha256")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dataflux", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="build and finalize a version from the embedded demo corpus")
    p.add_argument("--size", type=int, default=240, help="number of demo clips (default 240)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--error-rate", type=float, default=0.1, help="fraction of clips with a planted wrong label")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--unverified", action="store_true",
                   help="build the unverified twin: first questions kept as written, no judge or correction")
    p.add_argument("--tasks", help="rows to emit beside the questions: all, or a comma list of "
                                   "mcq,asr,caption,open_qa (default: mcq only)")
    p.add_argument("--quiet", action="store_true")
    _add_allow_empty_flag(p)
    _add_wait_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run sources of data_catalog.yaml into a version")
    p.add_argument("--config", default="data_catalog.yaml")
    p.add_argument("--source", action="append", help="a source name (repeatable); default: all")
    p.add_argument("--version", help="resume this draft version")
    p.add_argument("--name", help="a name for a new version")
    p.add_argument("--no-finalize", action="store_true")
    p.add_argument("--no-reuse", action="store_true",
                   help="process every source even if its inputs and config did not change")
    p.add_argument("--plant-errors", type=float, metavar="RATE",
                   help="give this fraction of clips a known wrong claim (swapped transcript, flipped gender or "
                        "label); stats then say how many the loop caught")
    p.add_argument("--unverified", action="store_true",
                   help="verification off (loop.verify: false): the unverified twin of the version")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    _add_allow_empty_flag(p)
    _add_wait_flags(p)
    p.set_defaults(func=cmd_run)

    # Commands that read the catalog: an optional positional, --config, and --json where it makes sense.
    for name, func, help_, positional, json_flag in (
        ("versions", cmd_versions, "list versions", None, True),
        ("stats", cmd_stats, "what a version holds", "version", True),
        ("sql", cmd_sql, "a read-only SQL query on the catalog (a `samples` view holds every version's rows)",
         "query", True),
        ("verify", cmd_verify, "check a version's shards against their recorded checksums", "version", False),
        ("runs", cmd_runs, "list runs and how each ended (interrupted: killed before it finished)", None, True),
    ):
        p = sub.add_parser(name, help=help_)
        if positional:
            p.add_argument(positional)
        p.add_argument("--config", help="a data_catalog.yaml whose catalog to use")
        if json_flag:
            p.add_argument("--json", action="store_true")
        if name == "sql":
            p.add_argument("--limit", type=int, default=DEFAULT_ROW_LIMIT,
                           help=f"print at most this many rows (default {DEFAULT_ROW_LIMIT}; 0: all)")
        p.set_defaults(func=func)

    for commands in (train_commands, eval_command, llm_command, ops_commands):
        commands.register(sub)
    return parser


# Commands that run a Prefect flow: its error records (a traceback per failed task) go to the log file.
FLOW_COMMANDS = {"demo", "run"}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Any error ends it with one line on stderr naming a log file that holds the
    traceback: exit 2 for the user's errors, 1 for ours (cli.errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log = errors.log_path(args.command)
    try:
        if args.command in FLOW_COMMANDS:
            prefect_env.apply()
            with errors.prefect_logs_to(log):
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"dataflux {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return errors.report(args.command, exc, log)


if __name__ == "__main__":
    sys.exit(main())
