"""The label check's embedding store: a survey's label check embedding afresh beside the same check
answered from the store, side by side in one process, with the verdicts compared.

    .venv/bin/python bench/bench_embedding_store.py --clips 240 --repeats 3

The corpus is the Hydrogen drum kits (fetched from Debian, as the tests fetch it), labelled by
instrument. Each repeat empties the store, runs the check (every clip embedded and stored), then
runs it again (every embedding read back). Reported: both times, their ratio, the median ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATAFLUX_HOME", tempfile.mkdtemp(prefix="bench-store-"))
from tests.helpers import real_audio as ra  # noqa: E402  (the test recordings, fetched from Debian packages)
from dataflux.audio import recognizer_facts  # noqa: E402
from dataflux.audio.label_check import check_source_labels  # noqa: E402
from dataflux.packaged_weights import cache_dir  # noqa: E402
from dataflux.records import SourceItem  # noqa: E402


def _read(item: SourceItem) -> bytes:
    with open(item.audio_path, "rb") as f:
        return f.read()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    records, _ = ra.drum_records()
    records = ra.subset(records, args.clips, seed=1, key="instrument")
    items = [SourceItem(source="drums", source_id=str(i), audio_path=r["file"], labels={"instrument": r["instrument"]})
             for i, r in enumerate(records)]
    recognizer_facts.recognizer()  # the model loads outside the timings
    store, ratios = cache_dir() / "embeddings", []
    for rep in range(args.repeats):
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        fresh = check_source_labels(items, _read, max_seconds=30)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        stored = check_source_labels(items, _read, max_seconds=30)
        warm = time.perf_counter() - t
        if fresh != stored:
            raise SystemExit("the verdicts from the store differ from the fresh ones")
        ratios.append(cold / warm)
        print(f"repeat {rep}: embedding afresh {cold:.2f} s, from the store {warm:.2f} s, {cold / warm:.1f}x; "
              f"{len(fresh)} clips judged, verdicts equal")
    report = {"clips": len(items), "median_ratio": round(statistics.median(ratios), 2)}
    print(report)
    return report


if __name__ == "__main__":
    main()
