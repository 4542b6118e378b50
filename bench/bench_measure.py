"""Speech and label checks' cost as audio-seconds per wall-second, Whisper's 30 s window beside
shorter windows: language ID, claim scoring (claim + 3 distractors, teacher-forced), free greedy
decoding, and the label check on pooled states.

    .venv/bin/python bench/bench_measure.py --clips 12 --windows 30 8 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ctranslate2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import real_audio as ra  # noqa: E402  (the test recordings, fetched from Debian packages)
from dataflux.audio.decode import decode_audio  # noqa: E402
from dataflux.audio.label_noise import check_labels  # noqa: E402
from dataflux.audio.whisper import WhisperRecognizer, ensure_whisper_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--windows", type=float, nargs="+", default=[30.0, 8.0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    records, _ = ra.speech_records(("es", "fr", "ru"))
    chosen = ra.subset(records, args.clips, seed=5)
    clips = [decode_audio(Path(r["file"]).read_bytes(), name=r["file"])[0] for r in chosen]
    audio_s = sum(len(c) for c in clips) / 16000
    folder = ensure_whisper_base(Path.home() / ".cache" / "dataflux-test-models")
    print(f"{len(clips)} clips, {audio_s:.1f} audio-s (median {np.median([len(c) for c in clips]) / 16000:.2f} s)")
    for window in args.windows:
        rec = WhisperRecognizer(folder, window_s=window, cpu_threads=args.threads)
        t0 = time.perf_counter()
        encoded = rec.encode(clips)
        t1 = time.perf_counter()
        rec.language_probabilities(clips, encoded)
        t2 = time.perf_counter()
        states = np.array(encoded)
        for i, (clip, r) in enumerate(zip(clips, chosen)):
            others = [x["transcript"] for x in chosen if x["id"] != r["id"]][:3]
            rec.claim_scores(clip, [r["transcript"], *others], r["language"], ctranslate2.StorageView.from_array(states[i:i + 1]))
        t3 = time.perf_counter()
        rec.transcribe(clips, [r["language"] for r in chosen], encoded)
        t4 = time.perf_counter()
        check_labels(np.array([s.mean(0) for s in states]), [r["language"] for r in chosen], min_clips=3)
        t5 = time.perf_counter()
        enc = t1 - t0
        print(f"window {window:4.0f} s: encode {audio_s / enc:6.2f} audio-s/s | encode+language ID {audio_s / (t2 - t0):6.2f} | "
              f"encode+claim scores {audio_s / (enc + t3 - t2):6.2f} | encode+free decoding {audio_s / (enc + t4 - t3):6.2f} | "
              f"label check (after encode) {audio_s / (t5 - t4):8.1f}")


if __name__ == "__main__":
    main()
