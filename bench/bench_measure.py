"""Speech and label checks' cost as audio-seconds per wall-second, Whisper's 30 s window beside
shorter windows: language ID, claim scoring (claim + 3 distractors, teacher-forced), free greedy
decoding, and the label check on pooled states; then the checks as the pipeline runs them
(`add_recognizer_facts`: batches of 8, one encoding for language ID, free decoding and claim
scoring) beside plain decoding of the same files.

    .venv/bin/python bench/bench_measure.py --clips 12 --windows 30 8 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ctranslate2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import real_audio as ra  # noqa: E402  (the test recordings, fetched from Debian packages)
from dataflux.audio.decode import decode_audio  # noqa: E402
from dataflux.audio.label_noise import check_labels  # noqa: E402
from dataflux.audio.whisper import WhisperRecognizer, ensure_whisper_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--windows", type=float, nargs="+", default=[30.0, 8.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pipeline-only", action="store_true")
    args = ap.parse_args()
    records, _ = ra.speech_records(("es", "fr", "ru"))
    chosen = ra.subset(records, args.clips, seed=5)
    pipeline_path(chosen)
    if args.pipeline_only:
        return
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


def pipeline_path(records: list[dict], repeats: int = 3) -> None:
    """The speech checks as a partition runs them, beside decoding alone (medians of `repeats`)."""
    from dataflux.audio.analyze import analyze_item
    from dataflux.audio.recognizer_facts import add_recognizer_facts, recognizer
    from dataflux.records import SourceItem

    vocab = sorted({r["transcript"] for r in records}, key=len)
    leaves = ["spoken_text", "spoken_language"]
    recognizer()  # loaded once, as a partition process does
    decode_s, check_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for r in records:
            decode_audio(Path(r["file"]).read_bytes(), name=r["file"])
        decode_s.append(time.perf_counter() - t0)
        items = [SourceItem("s", r["id"], audio_path=r["file"], labels={
            "transcript": r["transcript"], "language": r["language"], "speaker": r.get("speaker")}) for r in records]
        clips = [analyze_item(it, leaves, vocabularies={"spoken_text": vocab}) for it in items]
        t0 = time.perf_counter()
        add_recognizer_facts(clips, leaves, {"spoken_text": vocab})
        check_s.append(time.perf_counter() - t0)
    audio_s = sum(len(c.samples) for c in clips) / 16000
    print(f"pipeline path, {len(records)} clips, {audio_s:.1f} audio-s: speech checks {audio_s / np.median(check_s):.2f} "
          f"audio-s/s; plain decoding {audio_s / np.median(decode_s):.1f} audio-s/s; "
          f"checks cost {np.median(check_s) / np.median(decode_s):.0f}x decoding")


if __name__ == "__main__":
    main()
