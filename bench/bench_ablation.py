"""What verification buys: the same model trained on a verified demo version and on its unverified twin.

    python bench/bench_ablation.py [--demo-size 2000] [--rates 0.1,0.3] [--seeds 0,1] [--steps 600]
                                   [--minutes 3] [--config modeling/configs/tiny.yaml] [--out-dir DIR]
                                   [--eval-max-rows N] [--set SECTION.KEY=VALUE ...]
    python bench/bench_ablation.py --merge A/ablation.json B/ablation.json [--out-dir DIR]

For every planted error rate: builds the demo version (`dataflux demo --error-rate R`) and its
unverified twin (`--unverified`: the same clips, splits and first questions, kept as written, planted
errors included) in `<out-dir>/home`, then for every seed trains the preset on each with the same
budget (`--steps` optimizer steps, the learning-rate schedule ending there; `--minutes` a hard stop)
and the same seed, one run after the other. Every model is scored on the same questions: the
verified version's test split, clean clips only (no planted error, so the key is right whatever
verification did), by MMAU's matching and by exact answer, per category, beside the audio-zeroed
baseline. Prints the table and writes every figure to `<out-dir>/ablation.json`.

Early stopping on the validation split is off (a twin's validation answers carry its errors), so
both runs of a pair take the same number of steps unless the minutes run out first; the table
says how many each took. Finished runs are reused when the bench is rerun with the same flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

VARIANTS = ("verified", "unverified")
EVAL_COLUMNS_EXTRA = ["source_id"]


def planted_answers(catalog, version: str) -> int:
    """Rows of `version` whose answer key is the planted (wrong) value of their clip's planted leaf."""
    _, rows = catalog.query(
        "SELECT count(*) FROM samples s JOIN items i ON i.version_id = s.version_id AND i.source = s.source "
        "AND i.source_id = s.source_id WHERE s.version_id = ? AND i.planted IS NOT NULL "
        "AND i.planted->>'leaf' = s.l3 AND s.answer = i.planted->>'claimed'", [version])
    return int(rows[0][0])


def build_pair(size: int, rate: float, partitions: int = 4) -> dict[str, str]:
    """The demo version at planted error rate `rate` and its unverified twin; {variant: version id}.
    A pair already built (same name, finalized) is reused."""
    from dataflux.config import demo_config
    from dataflux.storage.catalog import Catalog
    from flows.synthesize import run_synthesis, unverified

    config = demo_config(size=size, error_rate=rate, partitions=partitions)
    out = {}
    for variant in VARIANTS:
        name = f"demo-{size}-{round(rate * 100)}pct" + ("-unverified" if variant == "unverified" else "")
        done = [v["version_id"] for v in Catalog(config.catalog_path).list_versions()
                if v["name"] == name and v["status"] == "finalized"]
        if done:
            out[variant] = done[-1]
            continue
        cfg = config if variant == "verified" else unverified(config)
        summary = run_synthesis(cfg, name=name, reuse=False)
        if summary.get("status") != "completed":
            raise RuntimeError(f"building {name} did not complete: {summary}")
        out[variant] = summary["version"]
    return out


def clean_test_rows(catalog, version: str, max_rows: int | None) -> list[dict[str, Any]]:
    """The test rows of `version` whose clip carries no planted error (full rows, audio included)."""
    import numpy as np

    from modeling.data import RowReader, VersionIndex
    from modeling.train import EVAL_COLUMNS

    _, planted = catalog.query("SELECT source, source_id FROM items WHERE version_id = ? AND planted IS NOT NULL",
                               [version])
    planted_ids = {tuple(p) for p in planted}
    index = VersionIndex.build(catalog.shard_paths(version))
    reader = RowReader(index, columns=EVAL_COLUMNS + EVAL_COLUMNS_EXTRA, cache_shards=len(index.paths))
    rows = [r for r in reader.rows(index.rows_of("test")) if (r["source"], r["source_id"]) not in planted_ids]
    if max_rows is not None and len(rows) > max_rows:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, max_rows).astype(int)]
    return rows


def train_and_score(version: str, catalog_path: str, config: str, run_dir: Path, overrides: list[str],
                    rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Train on `version` (no evaluation of its own) and score the checkpoint on `rows`."""
    import torch

    from modeling.model import EurekaAudioForCausalLM
    from modeling.processor import EurekaAudioProcessor
    from modeling.train import TrainConfig, evaluate_held_out, train

    cfg = TrainConfig.load(config, overrides)
    t0 = time.monotonic()
    result = train(version, cfg, catalog_path, run_dir, evaluate=False, record=False, log=lambda *_: None)
    model = EurekaAudioForCausalLM.from_pretrained(result["checkpoint"]).float().eval()
    processor = EurekaAudioProcessor.from_pretrained(result["checkpoint"])
    with torch.no_grad():
        scores = evaluate_held_out(model, processor, rows, cfg.train)
    m = result["metrics"]
    return {"steps": m["steps"], "examples": m["examples"], "train_minutes": m["train_minutes"],
            "stop_reason": m["stop_reason"], "wall_minutes": round((time.monotonic() - t0) / 60, 2), **scores}


def _mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range over seeds (0 with one seed)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rate and variant: overall and per-category MMAU/exact accuracy, mean and spread over seeds,
    and verified minus unverified."""
    out: dict[str, Any] = {}
    for rate in sorted({r["rate"] for r in runs}):
        table: dict[str, Any] = {}
        for variant in VARIANTS:
            mine = [r for r in runs if r["rate"] == rate and r["variant"] == variant]
            if not mine:
                continue
            cats = sorted({c for r in mine for c in r["audio"]["by_category"]})
            cell = {"seeds": [r["seed"] for r in mine], "steps": [r["steps"] for r in mine]}
            for score in ("mmau_accuracy", "exact_accuracy"):
                cell[score] = _mean_spread([r["audio"][score] for r in mine])
                cell["zero_audio_" + score] = _mean_spread([r["zero_audio"][score] for r in mine]) \
                    if all("zero_audio" in r for r in mine) else None
                cell["by_category_" + score] = {
                    c: _mean_spread([r["audio"]["by_category"][c][score] for r in mine
                                     if c in r["audio"]["by_category"]]) for c in cats}
            table[variant] = cell
        if len(table) == 2:
            table["verified_minus_unverified"] = {
                score: round(table["verified"][score][0] - table["unverified"][score][0], 4)
                for score in ("mmau_accuracy", "exact_accuracy")}
        out[f"{rate:g}"] = table
    return out


def print_table(report: dict[str, Any]) -> None:
    print(f"demo {report['demo_size']} clips, budget {report['steps']} steps / {report['minutes']} min per run, "
          f"seeds {report['seeds']}, scored on {report['eval_rows']} (per rate) clean test questions of the "
          f"verified version; cells: mean over seeds +- half the range, MMAU / exact")
    for rate, table in report["summary"].items():
        if "verified" not in table or "unverified" not in table:
            continue
        v, u = table["verified"], table["unverified"]
        asserted = report["planted_answers"][rate]
        print(f"\nplanted errors {float(rate):.0%}: rows asserting the planted value: "
              f"{asserted['unverified']} in the twin, {asserted['verified']} in the verified version; "
              f"steps verified {v['steps']}, unverified {u['steps']}")
        print(f"  {'category':16}{'verified':>30}{'unverified':>30}{'diff (mmau/exact)':>20}")

        def cell(c: dict, cat: str | None) -> str:
            parts = []
            for score in ("mmau_accuracy", "exact_accuracy"):
                mean, spread = c[score] if cat is None else c["by_category_" + score].get(cat, (float("nan"), 0))
                parts.append(f"{mean:.3f}+-{spread:.3f}")
            return " / ".join(parts)

        def diff(cat: str | None) -> str:
            def one(score):
                a = v[score][0] if cat is None else v["by_category_" + score].get(cat, (float("nan"),))[0]
                b = u[score][0] if cat is None else u["by_category_" + score].get(cat, (float("nan"),))[0]
                return f"{a - b:+.3f}"
            return f"{one('mmau_accuracy')}/{one('exact_accuracy')}"

        for cat in sorted(v["by_category_mmau_accuracy"]):
            print(f"  {cat:16}{cell(v, cat):>30}{cell(u, cat):>30}{diff(cat):>20}")
        print(f"  {'overall':16}{cell(v, None):>30}{cell(u, None):>30}{diff(None):>20}")
        if v.get("zero_audio_mmau_accuracy"):
            z = lambda c: f"{c['zero_audio_mmau_accuracy'][0]:.3f} / {c['zero_audio_exact_accuracy'][0]:.3f}"
            print(f"  {'audio zeroed':16}{z(v):>30}{z(u):>30}")


def merge_reports(paths: list[Path], out_dir: Path) -> dict[str, Any]:
    """One report from several: their runs together (a run seen twice is kept once), the versions,
    planted-answer counts and evaluation sizes per rate. Runs of one rate must have been scored on
    the same version's questions: a rate whose versions differ between files is an error."""
    reports = [json.loads(p.read_text()) for p in paths]
    first = reports[0]
    merged: dict[str, Any] = {k: first[k] for k in ("demo_size", "steps", "minutes", "config", "overrides")}
    merged.update({"rates": [], "seeds": [], "versions": {}, "planted_answers": {}, "eval_rows": {}, "runs": [],
                   "merged_from": [str(p) for p in paths]})
    seen = set()
    for path, r in zip(paths, reports):
        for key in ("versions", "planted_answers", "eval_rows"):
            for rate, value in r[key].items():
                if rate in merged[key] and merged[key][rate] != value:
                    raise ValueError(f"{path}: rate {rate} has {key} {value}, another file has {merged[key][rate]}")
                merged[key][rate] = value
        merged["rates"] = sorted(set(merged["rates"]) | set(r["rates"]))
        merged["seeds"] = sorted(set(merged["seeds"]) | set(r["seeds"]))
        for run in r["runs"]:
            ident = (run["rate"], run["variant"], run["seed"])
            if ident not in seen:
                seen.add(ident)
                merged["runs"].append(run)
    merged["summary"] = summarize(merged["runs"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(json.dumps(merged, indent=2, default=float))
    print_table(merged)
    print(f"\nwritten {out_dir / 'ablation.json'}")
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-size", type=int, default=2000)
    parser.add_argument("--rates", default="0.1,0.3", help="planted error rates, comma-separated")
    parser.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per run (the schedule's length)")
    parser.add_argument("--minutes", type=float, default=3.0, help="hard stop per run, in minutes of training")
    parser.add_argument("--config", default="modeling/configs/tiny.yaml")
    parser.add_argument("--out-dir", default="bench/out/ablation")
    parser.add_argument("--eval-max-rows", type=int, default=None, help="at most this many clean test rows")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--merge", nargs="+", metavar="ABLATION_JSON",
                        help="only combine the ablation.json files of separate invocations (e.g. one per seed "
                             "or rate, run side by side) into one table and <out-dir>/ablation.json")
    args = parser.parse_args(argv)
    if args.merge:
        return merge_reports([Path(p) for p in args.merge], Path(args.out_dir))

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["DATAFLUX_HOME"] = str(out / "home")
    from dataflux.config import demo_config
    from dataflux.storage.catalog import Catalog

    rates = [float(r) for r in args.rates.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    catalog_path = demo_config().catalog_path
    budget = [f"train.max_steps={args.steps}", f"train.max_minutes={args.minutes}", "train.stop_at_accuracy=null",
              "train.eval_every=0", f"train.save_every={max(args.steps, 1)}"]
    report: dict[str, Any] = {"demo_size": args.demo_size, "rates": rates, "seeds": seeds, "steps": args.steps,
                              "minutes": args.minutes, "config": args.config, "overrides": args.overrides,
                              "versions": {}, "planted_answers": {}, "eval_rows": {}, "runs": []}
    results_file = out / "ablation.json"
    for rate in rates:
        pair = build_pair(args.demo_size, rate, args.partitions)
        catalog = Catalog(catalog_path)
        key = f"{rate:g}"
        report["versions"][key] = pair
        report["planted_answers"][key] = {v: planted_answers(catalog, vid) for v, vid in pair.items()}
        rows = clean_test_rows(catalog, pair["verified"], args.eval_max_rows)
        report["eval_rows"][key] = len(rows)
        for seed in seeds:
            for variant in VARIANTS:
                run_dir = out / "runs" / f"{key}-{variant}-seed{seed}"
                scores = train_and_score(pair[variant], catalog_path, args.config, run_dir,
                                         [*args.overrides, *budget, f"train.seed={seed}"], rows)
                report["runs"].append({"rate": rate, "variant": variant, "seed": seed, "version": pair[variant],
                                       **scores})
                report["summary"] = summarize(report["runs"])
                results_file.write_text(json.dumps(report, indent=2, default=float))
    report["summary"] = summarize(report["runs"])
    results_file.write_text(json.dumps(report, indent=2, default=float))
    print_table(report)
    print(f"\nwritten {results_file}")
    return report


if __name__ == "__main__":
    main()
