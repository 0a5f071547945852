#!/usr/bin/env python3
"""OpenBLAS (through numpy) f32 GEMM throughput on the shapes `gemm_bench` times, to compare on the same machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=2 python scripts/gemm_reference.py
    RAYON_NUM_THREADS=2 cargo run --release -p codec --example gemm_bench

A benchmark run by hand (numpy only), never by CI. Shapes are parsed from crates/codec/examples/gemm_bench.rs so the
two stay the same list.
"""

import re
import sys
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parent.parent / "crates" / "codec" / "examples" / "gemm_bench.rs"


def main() -> int:
    shapes = re.findall(r'\("([^"]+)",\s*(\d+),\s*(\d+),\s*(\d+)\)', SRC.read_text())
    rng = np.random.default_rng(0)
    total_flop = total_time = 0.0
    print(f"{'shape':28} {'M':>5} {'N':>6} {'K':>5}  OpenBLAS")
    for what, m, n, k in shapes:
        m, n, k = int(m), int(n), int(k)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), dtype=np.float32)
        np.matmul(a, b, out=c)
        best = min(timed(lambda: np.matmul(a, b, out=c)) for _ in range(5))
        flop = 2.0 * m * n * k
        total_flop += flop
        total_time += best
        print(f"{what:28} {m:5} {n:6} {k:5}  {flop / best / 1e9:6.1f} GF")
    print(f"all shapes: OpenBLAS {total_flop / total_time / 1e9:.1f} GFLOP/s")
    return 0


def timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
