#!/usr/bin/env python3
"""codec_rs from Python against the PyTorch references and rustymimi, on the same clip and threads.

    python python/bench.py kyutai/mimi --threads 2
    python python/bench.py descript/dac_44khz --audio speech.wav --seconds 10
    python python/bench.py model.gguf --moshi-weights tokenizer-e351c8d8-checkpoint125.safetensors
    CODEC_BIN=target/release/codec python python/bench.py mimi.gguf --seconds 1

Times encode and decode (best of --runs after one warm-up) of codec_rs and of every reference that is installed
and has weights for the model, and prints each one's time and its ratio to codec_rs (its time / codec_rs's: above
1 means codec_rs is faster):
- transformers (MimiModel, DacModel): from --transformers SRC, else MODEL when it is a hub id or a hub-style
  directory;
- moshi and rustymimi (Mimi): --moshi-weights FILE, else Kyutai's published Mimi when MODEL is kyutai/mimi;
- descript-audio-codec (DAC): --descript-weights FILE.pth, else MODEL when it is a .pth, else descript's release
  when MODEL is descript/dac_{16,24,44}khz;
- the Rust library in-process (`codec bench`, which times the same chirp): --codec-bin PATH or $CODEC_BIN; its
  ratio is the Python overhead.
The clip: --audio FILE (read and resampled by codec_rs, cut to --seconds), else the chirp `codec bench` uses.
WavTokenizer's reference is not on PyPI; codec_rs alone is timed for it. Needs only codec_rs and numpy.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np


def best_of(runs: int, f: Callable[[], object]) -> tuple[float, object]:
    """The best wall time of `runs` calls of `f` after one warm-up, and the warm-up's result."""
    result = f()
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best, result


def chirp(seconds: float, rate: int) -> np.ndarray:
    """The input `codec bench` times: a chirp from 110 Hz rising by 400 Hz over the clip, with its third harmonic."""
    t = np.arange(round(seconds * rate)) / rate
    f = 110.0 + 400.0 * t / seconds
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(6 * np.pi * f * t)).astype(np.float32)


def is_hub_id(spec: str) -> bool:
    return not Path(spec).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", spec) is not None


class Skip(Exception):
    """A reference that cannot run here, and why."""


def need(module: str):
    """Imports `module`, or skips the reference when it is not installed."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise Skip(f"{module} is not installed") from None


def need_torch(args):
    """torch, set to the benchmark's threads, without autograd."""
    torch = need("torch")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    return torch


# Each reference: (name, arch it runs) -> a function (args, clip, n_q) returning (encode, decode) callables.


def transformers_ref(args, x: np.ndarray, n_q: int):
    src = args.transformers or (args.model if is_hub_id(args.model) or (Path(args.model) / "config.json").is_file()
                                else None)
    if src is None:
        raise Skip("no weights: pass --transformers SRC (a hub id or a hub-style directory)")
    torch, transformers = need_torch(args), need("transformers")
    xt = torch.from_numpy(x)[None, None]
    if args.arch == "mimi":
        model = transformers.MimiModel.from_pretrained(src).eval()
        codes = model.encode(xt, num_quantizers=n_q).audio_codes
        return lambda: model.encode(xt, num_quantizers=n_q), lambda: model.decode(codes)
    model = transformers.DacModel.from_pretrained(src).eval()
    codes = model.encode(xt, n_quantizers=n_q).audio_codes
    return lambda: model.encode(xt, n_quantizers=n_q), lambda: model.decode(audio_codes=codes)


def moshi_weights(args) -> str:
    if args.moshi_weights:
        return args.moshi_weights
    if args.model.split("@")[0] != "kyutai/mimi":
        raise Skip("no weights: pass --moshi-weights FILE (moshi's tokenizer-*.safetensors for this model)")
    loaders = need("moshi.models.loaders")
    return need("huggingface_hub").hf_hub_download(loaders.DEFAULT_REPO, loaders.MIMI_NAME)


def moshi_ref(args, x: np.ndarray, n_q: int):
    torch, loaders = need_torch(args), need("moshi.models.loaders")
    model = loaders.get_mimi(moshi_weights(args), device="cpu")
    model.set_num_codebooks(n_q)
    xt = torch.from_numpy(x)[None, None]
    codes = model.encode(xt)
    return lambda: model.encode(xt), lambda: model.decode(codes)


def rustymimi_ref(args, x: np.ndarray, n_q: int):
    rustymimi = need("rustymimi")
    tokenizer = rustymimi.Tokenizer(moshi_weights(args), num_codebooks=n_q)
    x3 = x[None, None]
    codes = tokenizer.encode(x3)
    return lambda: tokenizer.encode(x3), lambda: tokenizer.decode(codes)


def descript_ref(args, x: np.ndarray, n_q: int):
    torch, dac = need_torch(args), need("dac")
    weights = args.descript_weights or (args.model if args.model.endswith(".pth") else None)
    release = re.fullmatch(r"descript/dac_(16|24|44)khz", args.model)
    if weights is None and release is None:
        raise Skip("no weights: pass --descript-weights FILE.pth")
    weights = weights or dac.utils.download(model_type=f"{release.group(1)}khz")
    model = dac.DAC.load(str(weights)).eval()
    xt = model.preprocess(torch.from_numpy(x)[None, None], model.sample_rate)
    codes = model.encode(xt, n_quantizers=n_q)[1][:, :n_q]
    return lambda: model.encode(xt, n_quantizers=n_q), lambda: model.decode(model.quantizer.from_codes(codes)[0])


REFERENCES = [
    ("transformers", ("mimi", "dac"), transformers_ref),
    ("moshi", ("mimi",), moshi_ref),
    ("rustymimi", ("mimi",), rustymimi_ref),
    ("descript", ("dac",), descript_ref),
]


def rust_in_process(args, n_q: int) -> tuple[float, float]:
    """`codec bench` (the library in-process, the same chirp) on the same model, threads and runs."""
    codec_bin = args.codec_bin or os.environ.get("CODEC_BIN")
    if not codec_bin:
        raise Skip("no binary: pass --codec-bin PATH or set CODEC_BIN")
    cmd = [codec_bin, "bench", "-m", args.model, "--seconds", str(args.seconds), "--runs", str(args.runs),
           "--n-q", str(n_q), "--threads", str(args.threads), "--quiet"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    times = dict(re.findall(r"^(encode|decode):\s+([\d.]+) ms", out, re.MULTILINE))
    return float(times["encode"]) / 1e3, float(times["decode"]) / 1e3


def line(name: str, times: tuple[float, float], ours: Optional[tuple[float, float]] = None) -> str:
    """One implementation's encode and decode times, each with its ratio to codec_rs's when `ours` is given."""
    cells = []
    for what, t, o in zip(("encode", "decode"), times, ours or (None, None)):
        cells.append(f"{what} {t:8.4f} s" + (f" ({t / o:5.2f}x)" if o else ""))
    return f"{name:14s} " + "   ".join(cells)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="what codec_rs.Codec loads: a .gguf, a checkpoint or a hub id")
    ap.add_argument("--audio", type=Path, help="the clip (default: the chirp `codec bench` times)")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="compute threads for every implementation (default 2)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs; the best counts (default 3)")
    ap.add_argument("--n-q", type=int, help="codebooks (default: all)")
    ap.add_argument("--transformers", metavar="SRC", help="weights for transformers (hub id or directory)")
    ap.add_argument("--moshi-weights", metavar="FILE", help="moshi-layout Mimi weights for moshi and rustymimi")
    ap.add_argument("--descript-weights", metavar="FILE", help="descript's DAC weights .pth")
    ap.add_argument("--codec-bin", metavar="PATH", help="a built `codec` binary, to time the library in-process")
    args = ap.parse_args()
    if args.seconds <= 0 or args.runs < 1 or args.threads < 1:
        ap.error("--seconds, --runs and --threads must be positive")
    # Before any pool starts: codec_rs's, rustymimi's (rayon) and torch's own all get this many threads.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    # Run as a script, this directory comes first on sys.path, and the package's sources in it would shadow the
    # installed codec_rs, unless its native module was built in place (maturin develop).
    here = Path(__file__).resolve().parent
    if not any(p.suffix in (".so", ".pyd") for p in (here / "codec_rs").glob("_codec_rs*")):
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import codec_rs

    m = codec_rs.Codec(args.model, threads=args.threads)
    args.arch = m.arch
    n_q = args.n_q or m.max_n_q
    if args.audio:
        x = codec_rs.load_audio(args.audio, m.sample_rate)[: round(args.seconds * m.sample_rate)]
        clip = f"{args.audio} ({len(x) / m.sample_rate:.2f} s)"
    else:
        x = chirp(args.seconds, m.sample_rate)
        clip = f"{args.seconds:g} s chirp"
    print(f"codec_rs {codec_rs.__version__}: {m!r}")
    print(f"clip: {clip} at {m.sample_rate} Hz, n_q {n_q}, {args.threads} threads, best of {args.runs}; "
          "ratio = its time / codec_rs's")
    enc, codes = best_of(args.runs, lambda: m.encode(x, n_q=n_q))
    dec, _ = best_of(args.runs, lambda: m.decode(codes))
    ours = (enc, dec)
    print(line("codec_rs", ours))
    try:
        print(line("Rust library", rust_in_process(args, n_q), ours) + "   (in-process: `codec bench`)")
    except Skip as why:
        print(f"{'Rust library':14s} skipped: {why}")
    for name, archs, make in REFERENCES:
        if m.arch not in archs:
            continue
        try:
            encode, decode = make(args, x, n_q)
            print(line(name, (best_of(args.runs, encode)[0], best_of(args.runs, decode)[0]), ours))
        except Skip as why:
            print(f"{name:14s} skipped: {why}")
    if m.arch == "wavtokenizer":
        print("(WavTokenizer's reference implementation is not on PyPI: no reference timed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
