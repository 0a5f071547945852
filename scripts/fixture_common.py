"""Helpers shared by the reference-fixture generators make_fixtures.py (Mimi), make_dac_fixtures.py (DAC) and
make_wavtokenizer_fixtures.py (WavTokenizer).

The generators are run as `python scripts/X.py`, so scripts/ is on sys.path and they simply `import fixture_common`.
Everything here feeds the committed fixtures: a change that moves a random draw or a rounding changes their bytes
(regenerate all three fixture sets and compare before committing one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------------------
# signals


def synth_signal(n: int, sr: int, seed: int, noise: float = 0.02, burst_phase: bool = True) -> np.ndarray:
    """A deterministic mix of a log chirp, a vibrato harmonic tone with a syllable-like envelope, a second tone,
    noise bursts and a little white noise, peak-normalised to 0.5.

    burst_phase: the noise bursts' gate gets a random phase (DAC, WavTokenizer). The Mimi fixtures were made before
    it was added and pass False: it is one more draw from `rng`, so it changes everything drawn after it."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / sr
    dur = n / sr
    f0, f1 = rng.uniform(80, 200), rng.uniform(2000, min(6000, 0.4 * sr))
    k = math.log(f1 / f0) / dur
    chirp = np.sin(2 * math.pi * f0 * (np.exp(k * t) - 1) / k)
    fh = rng.uniform(110, 260)
    vib = 1 + 0.03 * np.sin(2 * math.pi * rng.uniform(4, 7) * t)
    phase = 2 * math.pi * np.cumsum(fh * vib) / sr
    harm = sum(np.sin(h * phase + rng.uniform(0, 2 * math.pi)) / h for h in range(1, 9))
    env = 0.5 * (1 + np.sin(2 * math.pi * rng.uniform(2.5, 5) * t + rng.uniform(0, 6.28))) ** 2
    tone2 = np.sin(2 * math.pi * rng.uniform(500, 1500) * t) * (t > dur * rng.uniform(0.2, 0.5))
    burst_noise = rng.standard_normal(n)
    gate = 2 * math.pi * rng.uniform(0.7, 1.5) * t
    if burst_phase:
        gate = gate + rng.uniform(0, 6.28)
    bursts = burst_noise * (np.sin(gate) > 0.8)
    x = 0.35 * chirp + 0.45 * harm * env + 0.2 * tone2 + 0.25 * bursts + noise * rng.standard_normal(n)
    x = 0.5 * x / np.max(np.abs(x))
    return x.astype(np.float32)


def load_input_wav(path: str, sr_out: int, n: int) -> np.ndarray:
    """Any audio file -> mono float32 at sr_out, trimmed or zero-padded to n samples."""
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    x = data.mean(axis=1)
    if sr != sr_out:
        from scipy.signal import resample_poly
        g = math.gcd(sr_out, sr)
        x = resample_poly(x, sr_out // g, sr // g)
    x = np.asarray(x, dtype=np.float32)
    x = x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))
    return np.ascontiguousarray(x, dtype=np.float32)


def t3(x: np.ndarray) -> torch.Tensor:
    """[T] -> [1, 1, T] float32."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).view(1, 1, -1)


# ----------------------------------------------------------------------------------------------------------------------
# tensors and arrays


def tensor_std(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> float:
    """The std of x computed in `dtype` (the Mimi fixtures were calibrated with float32, DAC / WavTokenizer float64)."""
    return float(x.to(dtype).std())


def np_f32(t: torch.Tensor) -> np.ndarray:
    """Batch-squeezed float32 array."""
    return np.ascontiguousarray(t.detach().squeeze(0).cpu().numpy().astype(np.float32))


def np_codes(t: torch.Tensor) -> np.ndarray:
    """Batch-squeezed int64 array."""
    return np.ascontiguousarray(t.detach().squeeze(0).cpu().numpy().astype(np.int64))


def cos(a, b) -> float:
    """Cosine similarity in float64 over the common prefix of the flattened arrays."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def maxdiff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.abs(a - b).max())


def stat(a) -> str:
    a = np.asarray(a, dtype=np.float64)
    return f"std {a.std():.4g} absmax {np.abs(a).max():.4g} mean {a.mean():+.3g}"


def best_of(reps: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Runs fn() reps times; returns the shortest wall time and the last result."""
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def perturb_conv(mod: torch.nn.Module, randn: Callable[..., torch.Tensor]) -> bool:
    """Fresh weights for a Conv1d (N(0, 1/fan_in)) or ConvTranspose1d (N(0, 1/taps): each output sample receives
    in/groups * kernel/stride taps), bias N(0, 0.2^2); whether `mod` was one. Draws from `randn` in the order the
    fixture generators always used, so their fixtures stay the same."""
    if isinstance(mod, torch.nn.Conv1d):
        fan_in = mod.in_channels // mod.groups * mod.kernel_size[0]
    elif isinstance(mod, torch.nn.ConvTranspose1d):
        fan_in = mod.in_channels // mod.groups * max(1, mod.kernel_size[0] // mod.stride[0])
    else:
        return False
    mod.weight.copy_(randn(*mod.weight.shape) / math.sqrt(fan_in))
    if mod.bias is not None:
        mod.bias.copy_(0.2 * randn(*mod.bias.shape))
    return True


# ----------------------------------------------------------------------------------------------------------------------
# writing


def write_input(out: Path, sr: int, x: np.ndarray) -> None:
    """input.wav + input.npy. scipy writes a byte-reproducible IEEE-float WAV (fmt 18 bytes + fact + data); libsndfile
    adds a PEAK chunk with a timestamp, which would change the committed file on every run."""
    from scipy.io import wavfile
    wavfile.write(str(out / "input.wav"), sr, x)
    assert np.array_equal(sf.read(str(out / "input.wav"), dtype="float32")[0], x)
    np.save(out / "input.npy", x)


def write_json(path: Path, obj, indent: int = 1) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def print_files(out: Path, t_start: float, indent: str = "  ", width: int = 28) -> int:
    """Lists the files under `out` with their sizes (entries indented two more than the header); returns the total."""
    total = 0
    print(f"{indent}files in {out}:")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"{indent}  {p.relative_to(out)!s:{width}s} {p.stat().st_size:>10d}")
    print(f"{indent}  total {total / 1e6:.2f} MB; {time.time() - t_start:.1f} s")
    return total


def print_root_total(root: Path, t_start: float) -> None:
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"all variants: total {total / 1e6:.2f} MB under {root}; {time.time() - t_start:.1f} s")


# ----------------------------------------------------------------------------------------------------------------------
# command line


def add_common_args(ap: argparse.ArgumentParser, *, out_default: str | None, out_help: str | None, full_help: str,
                    input_help: str, bench_only_help: str, variants_help: str | None = None,
                    bench_help: str | None = None, threads_help: str = "torch threads (generation and bench)") -> None:
    """--seed, --out, [--variants], --full-size, --input, [--bench], --bench-only, --threads, in that order
    (the bracketed ones only when their help is given)."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=out_default, help=out_help)
    if variants_help is not None:
        ap.add_argument("--variants", default=None, help=variants_help)
    ap.add_argument("--full-size", action="store_true", help=full_help)
    ap.add_argument("--input", help=input_help)
    if bench_help is not None:
        ap.add_argument("--bench", action="store_true", help=bench_help)
    ap.add_argument("--bench-only", action="store_true", help=bench_only_help)
    ap.add_argument("--threads", type=int, default=2, help=threads_help)


def parse_variants(ap: argparse.ArgumentParser, spec: str | None, default: list[str], known) -> list[str]:
    """--variants a,b (or `default`), each checked against `known`."""
    variants = spec.split(",") if spec else default
    for v in variants:
        if v not in known:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(known)}")
    return variants


def warn_if_in_repo(out, size_note: str = "") -> None:
    if Path(os.path.abspath(out)).as_posix().startswith(REPO.as_posix()):
        print(f"warning: full-size fixtures are large{size_note}; keep them out of the repo", file=sys.stderr)


def output_root(ap: argparse.ArgumentParser, args: argparse.Namespace, default_out: str, input_what: str,
                size_note: str) -> Path:
    """The output root of a generation run (DAC, WavTokenizer): full size needs --input and --out, and warns when
    --out is inside the repo."""
    if args.full_size and (args.input is None or args.out is None):
        ap.error(f"--full-size needs --input (a ~10 s speech {input_what}) and --out (outside the repo)")
    root = Path(args.out or default_out)
    if args.full_size:
        warn_if_in_repo(root, size_note)
    return root


def fixture_command(script: str, args: argparse.Namespace, default_out: str, src_arg: str = "",
                    variants_threads: bool = False) -> str:
    """The command line recorded in the fixtures' README / summary.json (only the options that differ from the
    defaults)."""
    cmd = f"python scripts/{script}{src_arg}" + (f" --seed {args.seed}" if args.seed else "")
    if args.full_size:
        cmd += f" --full-size --input {args.input} --out {args.out}"
    elif args.out is not None and args.out != default_out:
        cmd += f" --out {args.out}"
    if variants_threads:
        if args.variants:
            cmd += f" --variants {args.variants}"
        if args.threads != 2:
            cmd += f" --threads {args.threads}"
    return cmd


def summary_dirs(out: Path) -> list[tuple[Path, dict]] | None:
    """--bench-only: `out` itself or its subdirectories that hold a summary.json, with that summary; None (after an
    error message) when there are none."""
    dirs = [out] if (out / "summary.json").exists() else sorted(p.parent for p in out.glob("*/summary.json"))
    if not dirs:
        print(f"error: no summary.json in {out} or its subdirectories", file=sys.stderr)
        return None
    found = []
    for d in dirs:
        with open(d / "summary.json") as f:
            found.append((d, json.load(f)))
    return found
