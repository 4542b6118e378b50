"""`dataflux train` and `dataflux generate`: the trainer and inference from the command line.

`register(subparsers)` adds both subcommands to the `dataflux` CLI.
"""

from __future__ import annotations

import argparse
import json
import sys

from dataflux.config import load_config
from dataflux.home import config_file, default_catalog_path
from flows import prefect_env
from modeling.eval import read_clip


def _catalog_path(args) -> str:
    """--catalog, else the catalog of --data-config / ./data_catalog.yaml, else <dataflux home>/catalog.duckdb."""
    if args.catalog:
        return args.catalog
    named = config_file(args.data_config)  # the one rule for every command (dataflux.home)
    return str(load_config(named).catalog_path) if named else str(default_catalog_path())


def cmd_train(args) -> int:
    prefect_env.apply()
    from flows.train import train_flow  # lazy: importing prefect takes seconds, and must follow its env defaults

    result = train_flow(version=args.version, config=args.config, catalog_path=_catalog_path(args),
                        output_dir=args.output_dir, overrides=args.overrides)
    metrics = result.get("metrics") or {}
    summary = {k: result[k] for k in ("training_id", "status", "checkpoint", "run_dir")}
    for name in ("audio", "zero_audio"):
        if name in metrics:
            summary[f"{name}_accuracy"] = {"mmau": metrics[name]["mmau_accuracy"], "exact": metrics[name]["exact_accuracy"]}
    summary["train_minutes"] = metrics.get("train_minutes")
    print(json.dumps(summary, indent=2))
    return 0 if result["status"] == "completed" else 1


def cmd_generate(args) -> int:
    from modeling.answer import AudioLM  # lazy: imports torch, seconds that other commands skip

    clip = read_clip(args.audio, f"--audio {args.audio}")
    lm = AudioLM.from_checkpoint(args.checkpoint, device="cpu", max_new_tokens=args.max_new_tokens)
    print(lm.answer(clip, args.prompt))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the audio LM on a finalized version (resumes a rerun)")
    p.add_argument("--version", required=True, help="a finalized version id (see `dataflux versions`)")
    p.add_argument("--config", required=True, help="training preset, e.g. modeling/configs/tiny.yaml")
    p.add_argument("--catalog", help="catalog path (default: from data_catalog.yaml or <dataflux home>)")
    p.add_argument("--data-config", help="a data_catalog.yaml whose catalog to use")
    p.add_argument("--output-dir", help="run directory (default: <dataflux home>/trainings/<training id>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("generate", help="answer a prompt about an audio file with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="a run's final/ directory")
    p.add_argument("--audio", required=True, help="an audio file (wav, flac, ...)")
    p.add_argument("--prompt", required=True, help='the question, e.g. "How many beeps can be heard?\\n(A) ..."')
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(func=cmd_generate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modeling")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
