"""Our model in the loop: a trained checkpoint answers while the next version is built, and the
rows it got wrong are drawn more often when training again.

    python bench/bench_model_loop.py --checkpoint RUN/final [--demo-size 1000] [--demo-seed 1]
                                     [--hard-weight 3] [--steps 600] [--minutes 4] [--target 0.9]
                                     [--eval-every 50] [--seed 0] [--out-dir DIR] [--set SECTION.KEY=VALUE ...]

1. Builds a fresh demo version (`--demo-seed`: other clips than the checkpoint trained on) with the
   checkpoint as a third answerer (`backend: local`), so every row records `model_correct`; prints
   the model's accuracy per category as `dataflux stats` shows it.
2. Trains the preset from scratch on that version twice, same seed and budget: plain, and with
   `train.hard_example_weight` = `--hard-weight`. Every `--eval-every` steps the validation split
   is scored (teacher-forced, per category); a run stops once every category reaches `--target`.
   Prints the steps each run needed (or that it did not get there in the budget), the first check
   at which the overall validation accuracy reached the target, and the validation curve; writes everything to `<out-dir>/model_loop.json`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def build_answered_version(checkpoint: str, size: int, seed: int, error_rate: float, partitions: int,
                           name: str) -> dict[str, Any]:
    """A demo version built with `checkpoint` answering beside the reference answerers; its stats."""
    from dataflux.config import config_from_dict, demo_config
    from dataflux.storage.catalog import Catalog
    from flows.synthesize import run_synthesis

    base = demo_config(size=size, seed=seed, error_rate=error_rate, partitions=partitions)
    data = json.loads(json.dumps(base.data))
    data["steps"]["answerers"].append({"name": "ours", "backend": "local", "checkpoint": str(checkpoint),
                                       "max_tokens": 8})
    config = config_from_dict(data, origin="<demo config with our model answering>")
    done = [v["version_id"] for v in Catalog(config.catalog_path).list_versions()
            if v["name"] == name and v["status"] == "finalized"]
    if done:
        version = done[-1]
    else:
        summary = run_synthesis(config, name=name, reuse=False)
        if summary.get("status") != "completed":
            raise RuntimeError(f"building {name} did not complete: {summary}")
        version = summary["version"]
    return {"version": version, "catalog": config.catalog_path,
            "stats": Catalog(config.catalog_path, read_only=True).stats(version)}


def validation_curve(run_dir: Path) -> list[dict[str, Any]]:
    """(step, overall, worst category) of every validation check the run logged."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "validation" in rec:
            by = rec["validation"]["by_category"]
            out.append({"step": rec["step"], "accuracy": round(rec["validation"]["answer_accuracy"], 3),
                        "worst": min(by.values()) if by else None,
                        "worst_category": min(by, key=by.get) if by else None})
    return out


def first_step_at(curve: list[dict[str, Any]], key: str, target: float) -> int | None:
    """The first checked step whose `key` (accuracy: overall, worst: worst category) reached `target`."""
    return next((p["step"] for p in curve if p[key] is not None and p[key] >= target), None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a trained model folder (a training's final/)")
    parser.add_argument("--demo-size", type=int, default=1000)
    parser.add_argument("--demo-seed", type=int, default=1)
    parser.add_argument("--error-rate", type=float, default=0.1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--hard-weight", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--target", type=float, default=0.9, help="every validation category at or above this")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="modeling/configs/tiny.yaml")
    parser.add_argument("--out-dir", default="bench/out/model_loop")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["DATAFLUX_HOME"] = str(out / "home")
    from modeling.train import train

    built = build_answered_version(str(Path(args.checkpoint).resolve()), args.demo_size, args.demo_seed,
                                   args.error_rate, args.partitions, f"demo-{args.demo_size}-answered")
    model = built["stats"].get("model_accuracy")
    report: dict[str, Any] = {"checkpoint": args.checkpoint, "version": built["version"], "demo_size": args.demo_size,
                              "model_accuracy": model, "steps": args.steps, "minutes": args.minutes,
                              "target": args.target, "eval_every": args.eval_every, "seed": args.seed, "runs": {}}
    budget = [f"train.max_steps={args.steps}", f"train.max_minutes={args.minutes}",
              f"train.stop_at_accuracy={args.target}", f"train.eval_every={args.eval_every}",
              f"train.seed={args.seed}", f"train.save_every={max(args.steps, 1)}"]
    for name, weight in (("plain", 1.0), ("hard_weighted", args.hard_weight)):
        run_dir = out / "runs" / f"{name}-seed{args.seed}"
        result = train(built["version"], args.config, built["catalog"], run_dir,
                       [*args.overrides, *budget, f"train.hard_example_weight={weight}"],
                       evaluate=False, record=False, log=lambda *_: None)
        m = result["metrics"]
        curve = validation_curve(run_dir)
        report["runs"][name] = {"hard_example_weight": weight, "steps": m["steps"], "stop_reason": m["stop_reason"],
                                "reached_target": m["stop_reason"] == "validation_target",
                                "overall_at_target_step": first_step_at(curve, "accuracy", args.target),
                                "train_minutes": m["train_minutes"], "validation": curve}
        (out / "model_loop.json").write_text(json.dumps(report, indent=2))

    print(f"version {built['version']} ({args.demo_size} demo clips, seed {args.demo_seed}), "
          f"answered by {args.checkpoint}")
    if model:
        print(f"our model's accuracy: {model['accuracy']:.1%} of {model['n']} questions")
        for cat, d in model["by_category"].items():
            print(f"  {cat:16} {d['accuracy']:6.1%}  ({d['n']} questions)")
    print(f"\nsteps to every validation category >= {args.target} (budget {args.steps} steps / {args.minutes} min):")
    for name, run in report["runs"].items():
        reached = f"{run['steps']} steps" if run["reached_target"] else f"not reached in {run['steps']} steps"
        overall = run["overall_at_target_step"]
        curve = ", ".join(f"{p['step']}:{p['accuracy']:.2f}/{p['worst']:.2f}" for p in run["validation"]
                          if p["worst"] is not None)
        print(f"  {name:14} (weight {run['hard_example_weight']:g}): {reached}; overall >= {args.target} at "
              f"{f'step {overall}' if overall else 'no check'}; overall/worst category by step: {curve}")
    print(f"\nwritten {out / 'model_loop.json'}")
    return report


if __name__ == "__main__":
    main()
