"""`dataflux eval`: score a checkpoint on a finished version's held-out split or on MMAU.

    dataflux eval --checkpoint C --version V [--split test] [--out results.json] [--zero-audio]
    dataflux eval --checkpoint C --mmau mmau-test-mini.json --audio-dir DIR [--out results.json]

With --out, the scores (overall, per group, per item) go to that file and the answered items, in
MMAU's JSON shape with `model_prediction`, to `--predictions` (default: next to --out, named
`<out stem>.mmau.json`), which MMAU's own `evaluation.py --input` can score.

A version with task rows is scored task by task (`modeling.task_eval`): the results JSON keeps the
questions' scores at its top level and adds `tasks`, one block per task present: `mcq` (MMAU-scored
and exact accuracy), `asr` (WER), `caption` (ROUGE-L, BLEU), `open_qa` (exact and token accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cli.catalog_choice import open_catalog
from dataflux.storage.catalog import CatalogError
from dataflux.storage.shards import ShardError, read_shard
from modeling.eval import evaluate, format_summary, load_mmau_items, mmau_audio_loader, write_mmau_json
from modeling.task_eval import evaluate_tasks, format_task_summary

ROW_COLUMNS = ["sample_id", "source", "audio", "split", "l0", "l1", "l2", "l3", "transcript", "question",
               "choices", "answer", "answer_index", "messages"]
OPTIONAL_COLUMNS = ["task"]  # absent from shards written before it existed: those rows are mcq


def register(subparsers) -> None:
    """Add the `eval` command to the `dataflux` command line's subparsers."""
    p = subparsers.add_parser("eval", help="score a checkpoint on a version's held-out split or on MMAU",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a directory saved by the trainer (model + processor)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--version", help="a finalized data version in the catalog")
    source.add_argument("--mmau", metavar="JSON", help="MMAU's mmau-test-mini.json (or the test JSON)")
    p.add_argument("--audio-dir", help="with --mmau: the directory the JSON's audio_id paths are relative to")
    p.add_argument("--split", default="test", help="with --version: which split to score (default: test)")
    p.add_argument("--out", help="write the scores here (JSON)")
    p.add_argument("--predictions", help="write the answered items in MMAU's JSON shape here")
    p.add_argument("--zero-audio", action="store_true", help="replace every clip by silence (text-only baseline)")
    p.add_argument("--transcripts", action="store_true", help="also transcribe items with a transcript; report WER")
    p.add_argument("--limit", type=int, help="score only the first N items")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-new-tokens-text", type=int, default=64, help="for transcripts and captions")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--config", help="data_catalog.yaml that names the catalog (with --version)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)


def load_version_rows(catalog, version: str, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of `split` from a finalized version, each shard checked against its recorded sha256.

    Raises the catalog's `VersionNotFinalized` for a draft and `ChecksumMismatch`/`ShardMissing` for
    a shard that changed; a version without rows in `split` is a ValueError naming the splits it has.
    """
    catalog.shard_paths(version)  # refuses drafts and verifies every shard before anything is read
    rows: list[dict[str, Any]] = []
    seen_splits: set[str] = set()
    for shard in catalog.shards(version):
        if shard["path"] is None:
            continue
        table = read_shard(shard["path"], shard["sha256"])
        table = table.select([c for c in ROW_COLUMNS + OPTIONAL_COLUMNS if c in table.column_names])
        for row in table.to_pylist():
            seen_splits.add(row["split"])
            if row["split"] == split:
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    return rows
    if not rows:
        raise ValueError(f"version {version} has no rows in split {split!r} "
                         f"(splits present: {sorted(seen_splits) or 'none'}); pick one with --split")
    return rows


def cmd_eval(args) -> int:
    try:
        if args.mmau:
            if not args.audio_dir:
                raise ValueError("--mmau needs --audio-dir: the directory that holds MMAU's test-mini audios")
            items: list[dict[str, Any]] = load_mmau_items(args.mmau)[: args.limit]
            loader = mmau_audio_loader(args.audio_dir)
            source = {"mmau": str(args.mmau), "audio_dir": str(args.audio_dir)}
        else:
            items = load_version_rows(open_catalog(args, read_only=True), args.version, args.split, args.limit)
            loader = None
            source = {"version": args.version, "split": args.split}
        from modeling.answer import load_checkpoint  # lazy: torch takes seconds to import, which every other command would pay

        model, processor = load_checkpoint(args.checkpoint, args.device)
    except (CatalogError, ShardError) as exc:
        print(f"dataflux eval: error: {exc}", file=sys.stderr)
        return 2

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"\r  {done}/{total} answered", end="" if done < total else "\n", file=sys.stderr, flush=True)

    def task_of(item: dict[str, Any]) -> str:  # an MMAU item's `task` is MMAU's (sound/music/speech)
        return "mcq" if args.mmau else (item.get("task") or "mcq")

    questions = [it for it in items if task_of(it) == "mcq"]
    result = evaluate(model, processor, questions, loader, zero_audio=args.zero_audio, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, transcripts=args.transcripts, progress=progress)
    predictions = result.pop("predictions")
    result["tasks"] = {"mcq": {k: result[k] for k in ("n", "mmau_accuracy", "exact_accuracy", "no_prediction")}}
    others = [it for it in items if task_of(it) != "mcq"]
    if others:
        blocks = evaluate_tasks(model, processor, others, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, max_new_tokens_text=args.max_new_tokens_text,
                                audio_loader=loader, zero_audio=args.zero_audio)
        result["tasks"].update(blocks)
    print(format_summary(result))
    if others:
        print(format_task_summary(result["tasks"]))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"checkpoint": str(args.checkpoint), **source, **result}, indent=2,
                                  ensure_ascii=False, default=str) + "\n")
        print(f"scores: {out}")
    pred_path = args.predictions or (str(Path(args.out).with_suffix("")) + ".mmau.json" if args.out else None)
    if pred_path:
        print(f"MMAU-shaped predictions (model_prediction per item): {write_mmau_json(predictions, pred_path)}")
    return 0
