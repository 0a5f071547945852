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
reference's outputs (moshi for Mimi, descript for DAC), in f32 and in the fast modes (`--precision bf16`, `int8`; int8
also on the q8_0 file, whose blocks it multiplies as stored). Then, side by side in one run
with the same thread count: the whole `codec encode` / `codec decode` process (start-up, file I/O and all; best of
`--runs`), `codec bench` (in-process), and the reference in-process (the generator's `--bench-only`; for Mimi also
rustymimi, Kyutai's Rust Mimi, on the same weights file), each once per round in `--rounds` interleaved rounds, and
prints the best of each, their ratios, each round's own f32 ratio (both sides timed minutes apart at most: robust to
a VM whose speed drifts), and the machine. Needs numpy and
soundfile (the reference venv has both).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
# The fast modes measured beside exact f32.
FAST = ["bf16", "int8"]
# The binary under test: $CODEC_BIN, or the workspace build.
CODEC = Path(os.environ.get("CODEC_BIN", ROOT / "target" / "release" / "codec"))


def run(*args: str, env: dict | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout


def best_wall(args: list[str], runs: int) -> float:
    """Best wall time of the whole process over `runs` (after one warm-up that fills the page cache)."""
    run(*args)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        run(*args)
        best = min(best, time.perf_counter() - t)
    return best


def _dig(d: dict, *path: str) -> float:
    for key in path:
        d = d[key]
    return d


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return f"{model}, {os.cpu_count()} logical CPUs; codec-rs {commit}; {time.strftime('%Y-%m-%d')}"


RUSTYMIMI = """
import sys, time, numpy as np, rustymimi
path, wav, n_q, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = np.load(wav).astype(np.float32).reshape(1, 1, -1)
tok = rustymimi.Tokenizer(path, num_codebooks=n_q)
codes = tok.encode(x)
def best(f):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)
print(f"rustymimi encode {best(lambda: tok.encode(x)):.3f} s decode {best(lambda: tok.decode(codes)):.3f} s")
"""


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
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every program (best of each)")
    ap.add_argument("--wavtokenizer-src", default="/tmp/WavTokenizer", help="checkout of the original repository")
    args = ap.parse_args()
    if args.runs < 1 or args.rounds < 1:
        ap.error("--runs and --rounds must be at least 1")
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
        print(f"machine: {machine()}")
        print(f"parity against the reference ({fx}):")
        for name, cmd in models.items():
            gguf = tmp / f"{name}.gguf"
            run(str(CODEC), *cmd, "-o", str(gguf), "--quiet")
            precisions = {last: ["f32", *FAST], f"{last}-q8_0": ["f32", "int8"]}.get(name, ["f32"])
            for precision in precisions:
                opts = [*threads, "--precision", precision]
                run(str(CODEC), "encode", "-m", str(gguf), str(fx / "input.wav"), "-o", str(tmp / "codes.npy"), *opts)
                run(str(CODEC), "decode", "-m", str(gguf), str(fx / "codes.npy"), "-o", str(tmp / "dec.wav"), *opts)
                decoded, _ = sf.read(tmp / "dec.wav", dtype="float64")
                label = name if precision == "f32" else f"{name}-{precision}"
                compare(label, np.load(tmp / "codes.npy"), ref_codes, decoded, ref_decoded)
            print(f"{'':10s} file size {gguf.stat().st_size / 2**20:.1f} MiB")

        model = str(tmp / f"{last}.gguf")
        generator = {"mimi": "make_fixtures.py", "dac": "make_dac_fixtures.py",
                     "wavtokenizer": "make_wavtokenizer_fixtures.py"}[args.arch]
        extra = ["--wavtokenizer-src", args.wavtokenizer_src] if args.arch == "wavtokenizer" else []
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        n_q = int(ref_codes.shape[0])
        # Every program once per round, the rounds one after another: a VM whose speed drifts over minutes then
        # slows both sides of each round's ratio alike, where running all of ours first and the reference after
        # compared different phases of the machine.
        rounds = []
        for i in range(args.rounds):
            process, ours = {}, {}
            for precision in ("f32", *FAST):
                opts = [*threads, "--precision", precision]
                enc = [str(CODEC), "encode", "-m", model, str(fx / "input.wav"), "-o", str(tmp / "c.npy"), *opts]
                dec = [str(CODEC), "decode", "-m", model, str(fx / "codes.npy"), "-o", str(tmp / "d.wav"), *opts]
                process[precision] = {"encode": best_wall(enc, args.runs), "decode": best_wall(dec, args.runs)}
                bench = run(str(CODEC), "bench", "-m", model, "--runs", str(args.runs), "--precision", precision,
                            *threads)
                if i == 0:
                    print(bench.strip())
                ours[precision] = {k: float(v) / 1e3 for k, v in re.findall(r"(encode|decode):\s+([\d.]+) ms", bench)}
            ref = run(sys.executable, str(ROOT / "scripts" / generator), "--bench-only", "--out", str(fx),
                      "--threads", str(args.threads), *extra)
            if i == 0:
                print(ref.strip())
            reference = {k: float(v) for k, v in re.findall(r"(encode|decode) ([\d.]+) s", ref.splitlines()[0])}
            rusty = {}
            if args.arch == "mimi":
                rm = run(sys.executable, "-c", RUSTYMIMI, str(fx / "original" / "model.safetensors"),
                         str(fx / "input.npy"), str(n_q), str(args.runs), env=env)
                rusty = {k: float(v) for k, v in re.findall(r"(encode|decode) ([\d.]+) s", rm)}
            rounds.append({"process": process, "ours": ours, "reference": reference, "rusty": rusty})
            print(f"round {i + 1}: f32 " + ", ".join(
                f"{k} codec process {process['f32'][k]:.3f} s, in-process {ours['f32'][k]:.3f} s, reference "
                f"{reference[k]:.3f} s" for k in ("encode", "decode")))
    name = {"mimi": "moshi", "dac": "descript", "wavtokenizer": "WavTokenizer"}[args.arch]
    audio_s = sf.info(str(fx / "input.wav")).duration
    def best(*path: str) -> float:
        return min(_dig(r, *path) for r in rounds)

    process = {p: {k: best("process", p, k) for k in ("encode", "decode")} for p in rounds[0]["process"]}
    ours = {p: {k: best("ours", p, k) for k in ("encode", "decode")} for p in rounds[0]["ours"]}
    print(f"speed, {audio_s:.1f} s of audio, {args.threads} threads, best of {args.runs} runs in each of "
          f"{args.rounds} interleaved rounds (codec process = the whole `codec encode/decode` command; in-process = "
          f"`codec bench`):")
    for k in ("encode", "decode"):
        theirs = best("reference", k)
        timing = lambda times: ", ".join(f"{p} {times[p][k]:.3f} s ({theirs / times[p][k]:.2f}x)" for p in times)
        print(f"{k}: {name} {theirs:.3f} s | codec process {timing(process)} | in-process {timing(ours)}")
        per_round = [r["reference"][k] / r["process"]["f32"][k] for r in rounds]
        print(f"{k}: f32 codec process vs {name} within each round: "
              + ", ".join(f"{x:.2f}x" for x in per_round) + f" (median {float(np.median(per_round)):.2f}x)")
    if args.arch == "mimi":
        for k in ("encode", "decode"):
            r = best("rusty", k)
            print(f"{k}: rustymimi {r:.3f} s in-process | codec process f32 {r / process['f32'][k]:.2f}x, "
                  f"in-process " + ", ".join(f"{p} {r / ours[p][k]:.2f}x" for p in ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
