"""MoE adapter (Eureka-Audio) against the linear adapter (Falcon3-Audio) at the same training budget.

    python bench/bench_adapters.py --version V [--catalog PATH] [--config modeling/configs/tiny.yaml]
                                   [--minutes 10] [--out-dir DIR] [--set SECTION.KEY=VALUE ...]

Trains the preset twice on the finished version `V`, once with `model.adapter=moe` and once with
`model.adapter=linear`, each with the same wall-time budget, seed and data order, one after the other
(so they do not share the cores). Prints, side by side: held-out accuracy as MMAU scores it and as
exact answers (option letter and text), per category, the audio-zeroed baseline, steps and
examples seen, and for the MoE run the tokens each expert received and the smallest expert's share
of its fair share (collapse check: every expert should get at least 1/4 of it). Writes the two
metric sets to `<out-dir>/adapters.json`.

Without `--version`, builds the demo version first (`--demo-size` clips) in `<out-dir>/home`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from modeling.train import train


def _row(name: str, metrics: dict) -> dict:
    audio = metrics.get("audio", {})
    blind = metrics.get("zero_audio", {})
    return {
        "adapter": name,
        "steps": metrics.get("steps"),
        "examples": metrics.get("examples"),
        "train_minutes": metrics.get("train_minutes"),
        "mmau_accuracy": audio.get("mmau_accuracy"),
        "exact_accuracy": audio.get("exact_accuracy"),
        "zero_audio_exact": blind.get("exact_accuracy"),
        "by_category": {k: (v["mmau_accuracy"], v["exact_accuracy"]) for k, v in audio.get("by_category", {}).items()},
        "expert_load": metrics.get("expert_load"),
    }


def _demo_version(home: Path, size: int) -> tuple[str, str]:
    """Build the demo version with the synthesis flow in `home`; returns (version id, catalog path)."""
    os.environ["DATAFLUX_HOME"] = str(home)
    from dataflux.config import demo_config
    from flows.synthesize import run_synthesis

    config = demo_config(size=size)
    return run_synthesis(config, name="demo")["version"], str(config.catalog_path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None)
    parser.add_argument("--catalog", default=None)
    parser.add_argument("--config", default="modeling/configs/tiny.yaml")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--demo-size", type=int, default=8000)  # the size the tiny preset is made for
    parser.add_argument("--out-dir", default="bench/out/adapters")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    version, catalog = args.version, args.catalog
    if version is None:
        version, catalog = _demo_version(out / "home", args.demo_size)
    rows = []
    for name in ("moe", "linear"):
        overrides = [*args.overrides, f"model.adapter={name}", f"train.max_minutes={args.minutes}"]
        result = train(version, args.config, catalog, out / name, overrides, record=False, log=lambda *_: None)
        rows.append(_row(name, result["metrics"]))
    (out / "adapters.json").write_text(json.dumps(rows, indent=2))

    cats = sorted({c for r in rows for c in r["by_category"]})
    print(f"version {version}, budget {args.minutes} min each, config {args.config}")
    print(f"{'':22}" + "".join(f"{r['adapter']:>22}" for r in rows))
    for key in ("steps", "examples", "train_minutes", "mmau_accuracy", "exact_accuracy", "zero_audio_exact"):
        print(f"{key:22}" + "".join(f"{str(r[key]):>22}" for r in rows))
    for c in cats:
        cells = [r["by_category"].get(c) for r in rows]
        print(f"  {c:20}" + "".join(f"{'%.3f / %.3f' % cell if cell else '-':>22}" for cell in cells))
    load = rows[0]["expert_load"]
    if load:
        print(f"MoE tokens per expert: {load['tokens_per_expert']}")
        print(f"smallest expert's share of its fair share: {load['min_share_of_fair']:.2f} "
              f"(collapse if < 0.25: {'no' if load['load_balance_lower_bound_ok'] else 'YES'})")
    return {"version": version, "runs": rows}


if __name__ == "__main__":
    main()
