#!/usr/bin/env python3
"""Side-by-side speed of Pocket TTS: pocket-tts 4.0.1 (PyTorch, in-process) vs `codec tts` (the whole process).

Run by hand (never by CI) from the reference venv, on a full-size random-weight set made by
`scripts/make_pocket_tts_fixtures.py --full-size --out DIR`, after `cargo build --release -p codec-cli`:

    ~/ref-venv/bin/python scripts/bench_pocket_tts.py /tmp/pocket-full [--threads 2] [--runs 3]

Both sides get the same weights, the same text, temperature 0 (no noise: both generate the same number of frames,
which the fixture's EOS head is calibrated for) and the same thread count. Reported, best of `--runs`:
  - pocket-tts: `generate_audio` wall time (in-process: the model already loaded, as a server would run it), its
    real-time factor, and the time from calling `generate_audio_stream` to its first audio chunk; its default decode
    set-up (the Mimi decoder on its own thread, frames batched by timing);
  - codec-rs, per precision (`int8@q8_0`: int8 on a `--dtype q8_0` file): the whole `codec tts` process wall time (start-up, reading the 420 MB model, writing
    the WAV), its RTF, and the in-process generation time and time to first audio that `codec tts --stream` prints
    (from the call, model loaded: comparable to pocket-tts's numbers).
RTF = compute time / seconds of speech (below 1: faster than real time).
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEXT = "Hello world. The quick brown fox jumps over the lazy dog."


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_reference(d: Path):
    from make_pocket_tts_fixtures import build_model
    from safetensors.torch import load_file

    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["flow_lm"]["lookup_table"]["tokenizer_path"] = str(d / "tokenizer.json")
    model = build_model(cfg, temp=0.0)
    missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
    if missing or unexpected:
        sys.exit(f"weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # The package's default: the Mimi decoder on its own thread, decoding as many frames per call as are ready.
    model.max_decoder_frames_per_call = 0
    return model


def bench_reference(d: Path, text: str, threads: int, runs: int):
    from make_pocket_tts_fixtures import empty_state

    torch.set_num_threads(threads)
    model = load_reference(d)
    rate = model.sample_rate
    with torch.no_grad():
        model.generate_audio(empty_state(model), text)  # warm-up (first-call allocations)
        total, first = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            audio = model.generate_audio(empty_state(model), text)
            total.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i, _chunk in enumerate(model.generate_audio_stream(empty_state(model), text)):
                if i == 0:
                    first.append(time.perf_counter() - t0)
    return audio.shape[-1] / rate, min(total), min(first)


def bench_ours(codec: Path, gguf: Path, text: str, threads: int, runs: int, precision: str, out: Path):
    cmd = [str(codec), "--threads", str(threads), "--precision", precision, "tts", "-m", str(gguf), text,
           "--temperature", "0", "--stream", "-o", str(out)]
    best = None
    for _ in range(runs + 1):  # the first run warms the page cache
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {p.stderr}")
        first = float(re.search(r"first audio after (\d+) ms", p.stderr).group(1)) / 1000
        m = re.search(r"generated ([\d.]+) s of speech in ([\d.]+) s", p.stderr)
        seconds, gen = float(m.group(1)), float(m.group(2))
        if best is None or wall < best[1]:
            best = (seconds, wall, gen, first)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path, help="a --full-size set from make_pocket_tts_fixtures.py")
    ap.add_argument("--codec", type=Path, default=None,
                    help="the codec binary (default: $CARGO_TARGET_DIR or target/, release)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--text", default=TEXT)
    ap.add_argument("--precision", default="f32,bf16,int8,int8@q8_0",
                    help="comma-separated codec precisions; '@q8_0': on a `--dtype q8_0` conversion")
    args = ap.parse_args()


    codec = args.codec or Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "codec"
    files = {"f32": args.dir / "pocket-tts.gguf", "q8_0": args.dir / "pocket-tts-q8.gguf"}
    for dtype, gguf in files.items():
        if not gguf.exists():
            subprocess.run([str(codec), "convert", str(args.dir / "model.safetensors"), "--config",
                            str(args.dir / "config.yaml"), "--dtype", dtype, "-o", str(gguf), "--quiet"], check=True)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"CPU: {cpu_model()}; {args.threads} threads; best of {args.runs}; text {args.text!r}; "
          f"codec-rs {rev.stdout.strip()}, pocket-tts 4.0.1 / torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")

    secs, total, first = bench_reference(args.dir, args.text, args.threads, args.runs)
    print(f"pocket-tts (in-process generate_audio): {secs:.2f} s of speech in {total:.3f} s, RTF {total / secs:.3f}, "
          f"first audio {first * 1000:.0f} ms")
    out = args.dir / "bench-out.wav"
    for name in args.precision.split(","):
        precision, _, dtype = name.partition("@")
        gguf = files[dtype or "f32"]
        s, wall, gen, first_ours = bench_ours(codec, gguf, args.text, args.threads, args.runs, precision, out)
        if abs(s - secs) > 0.2:
            print(f"  note: codec-rs {name} made {s:.2f} s of speech, pocket-tts {secs:.2f} s: compare RTFs, not times")
        print(f"codec-rs {name}: whole process {wall:.3f} s (RTF {wall / s:.3f}, {total / secs / (wall / s):.2f}x "
              f"pocket-tts); in-process {gen:.3f} s (RTF {gen / s:.3f}, {total / secs / (gen / s):.2f}x); "
              f"first audio {first_ours * 1000:.0f} ms ({first * 1000:.0f} ms pocket-tts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
