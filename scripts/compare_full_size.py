#!/usr/bin/env python3
"""Full-size models: codec-rs against the references, parity and speed, on one machine. Run by hand, never by CI.

    ~/ref-venv/bin/python scripts/make_fixtures.py --full-size --input /tmp/speech.wav --out /tmp/mimi-full
    ~/ref-venv/bin/python scripts/make_dac_fixtures.py --full-size --input /tmp/speech44.wav --out /tmp/dac-full
    cargo build --release
    ~/ref-venv/bin/python scripts/compare_full_size.py mimi /tmp/mimi-full [--threads 2] [--runs 3]
    ~/ref-venv/bin/python scripts/compare_full_size.py dac /tmp/dac-full/44khz
    ~/ref-venv/bin/python scripts/compare_full_size.py wavtokenizer /tmp/wt-full/frame75

Converts both checkpoint layouts (and f16 / q8_0 copies) with `codec convert`, encodes the fixture's input and decodes
the reference's codes with `codec`, and prints the code mismatch fraction, decoded cosine and SNR against the
reference's outputs (moshi for Mimi, descript for DAC). Then times `codec bench` and the reference (the generator's
`--bench-only`) with the same thread count and prints the speed ratios. Needs numpy and soundfile (the reference venv
has both).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
CODEC = ROOT / "target" / "release" / "codec"


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def compare(name: str, codes: np.ndarray, ref_codes: np.ndarray, decoded: np.ndarray, ref_decoded: np.ndarray) -> None:
    mismatch = (codes != ref_codes).mean()
    cos = float(decoded @ ref_decoded / np.linalg.norm(decoded) / np.linalg.norm(ref_decoded))
    snr = 10 * np.log10((ref_decoded**2).sum() / max(((decoded - ref_decoded) ** 2).sum(), 1e-30))
    print(f"{name:10s} codes {codes.shape} mismatch {mismatch * 100:6.2f} %   decoded cos {cos:.9f}   "
          f"SNR {snr:6.1f} dB   max |diff| {np.abs(decoded - ref_decoded).max():.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", choices=["mimi", "dac", "wavtokenizer"])
    ap.add_argument("fixtures", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--wavtokenizer-src", default="/tmp/WavTokenizer", help="checkout of the original repository")
    args = ap.parse_args()
    fx = args.fixtures
    ref_codes = np.load(fx / "codes.npy")
    ref_decoded = np.load(fx / "decoded.npy").astype(np.float64)
    threads = ["--threads", str(args.threads), "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        orig = fx / "original"
        layouts = {
            "mimi": {"original": [str(orig / "model.safetensors"), "--config", str(orig / "config.json")],
                     "hub": [str(fx / "hub")]},
            "dac": {"original": [str(orig / "weights.pth")], "hub": [str(fx / "hub")]},
            "wavtokenizer": {"original": [str(orig / "model.ckpt"), "--config", str(orig / "config.yaml")]},
        }[args.arch]
        last = list(layouts)[-1]
        models = {name: ["convert", *src] for name, src in layouts.items()}
        models[f"{last}-f16"] = ["convert", *layouts[last], "--dtype", "f16"]
        models[f"{last}-q8_0"] = ["convert", *layouts[last], "--dtype", "q8_0"]
        print(f"parity against the reference ({fx}):")
        for name, cmd in models.items():
            gguf = tmp / f"{name}.gguf"
            run(str(CODEC), *cmd, "-o", str(gguf), "--quiet")
            run(str(CODEC), "encode", "-m", str(gguf), str(fx / "input.wav"), "-o", str(tmp / "codes.npy"), *threads)
            run(str(CODEC), "decode", "-m", str(gguf), str(fx / "codes.npy"), "-o", str(tmp / "dec.wav"), *threads)
            decoded, _ = sf.read(tmp / "dec.wav", dtype="float64")
            compare(name, np.load(tmp / "codes.npy"), ref_codes, decoded, ref_decoded)
            print(f"{'':10s} file size {gguf.stat().st_size / 2**20:.1f} MiB")

        bench = run(str(CODEC), "bench", "-m", str(tmp / f"{last}.gguf"), "--runs", str(args.runs), *threads)
    print(bench.strip())
    ours = {k: float(v) / 1e3 for k, v in re.findall(r"(encode|decode):\s+([\d.]+) ms", bench)}
    generator = {"mimi": "make_fixtures.py", "dac": "make_dac_fixtures.py",
                 "wavtokenizer": "make_wavtokenizer_fixtures.py"}[args.arch]
    extra = ["--wavtokenizer-src", args.wavtokenizer_src] if args.arch == "wavtokenizer" else []
    ref = run(sys.executable, str(ROOT / "scripts" / generator), "--bench-only", "--out", str(fx),
              "--threads", str(args.threads), *extra)
    print(ref.strip())
    reference = dict(re.findall(r"(encode|decode) ([\d.]+) s", ref.splitlines()[0]))
    name = {"mimi": "moshi", "dac": "descript", "wavtokenizer": "WavTokenizer"}[args.arch]
    for k in ("encode", "decode"):
        theirs = float(reference[k])
        print(f"{k}: codec-rs {ours[k]:.3f} s, {name} {theirs:.3f} s -> {theirs / ours[k]:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
