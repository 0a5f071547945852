#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and no Rust: takes a release binary built elsewhere with
# `--features cuda` (scripts/cuda-toolkit.sh), runs the committed parity fixtures on --device "$device" against
# --device cpu (codes identical; decoded audio cos >= 0.99999, same length), then `codec bench` of each full-size
# model (random weights) on the GPU at batch 1 and 16 and on the CPU at batch 1. Writes OUT/results.md and logs.
# Ends in about 3-5 minutes on an H200.
#
#   scripts/gpu-check.sh BIN OUT                     # BIN: the binary, or a .gz of it
#
# Needs python3 with numpy (for the comparisons), the driver's libcuda.so.1, and CUDA 13's libcudart, libcublas,
# libcurand and libnvrtc: found on LD_LIBRARY_PATH, or in a Python install's site-packages/nvidia/cu13/lib
# (PyTorch's CUDA wheels bring them), which this script adds.
set -uo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 BIN OUT" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
# GPU_CHECK_DEVICE=cpu dry-runs the script's own logic on a machine without a GPU.
device="${GPU_CHECK_DEVICE:-cuda}"
seconds="${GPU_CHECK_SECONDS:-10}"
python="${PYTHON:-python3}" # with numpy
mkdir -p "$2"
out=$(cd "$2" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin="$work/codec"
case "$1" in
    *.gz) gzip -dc "$1" >"$bin" ;;
    *) cp "$1" "$bin" ;;
esac
chmod +x "$bin"

for lib in $(python3 -c 'import glob, sys; print(" ".join(d for p in sys.path for d in glob.glob(p + "/nvidia/cu13/lib")))' 2>/dev/null); do
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
log="$out/log.txt"
: >"$log"
say() { echo "$@" | tee -a "$log"; }
run() { # run CMD...: logged; output shown on failure
    echo "+ $*" >>"$log"
    "$@" >>"$log" 2>&1 || { say "FAILED ($?): $*"; tail -5 "$log"; return 1; }
}

say "# GPU check of codec-rs $(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%F)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$log"
say "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) logical CPUs"
ldd "$bin" | grep -E "not found" | sed 's/^/missing library: /' | tee -a "$log"

compare() { # compare KIND A B: codes (npy) identical, or audio (float WAV) cos and length
    "$python" - "$@" <<'EOF'
import sys, numpy as np
kind, a, b = sys.argv[1:4]
def wav(path):
    raw = open(path, "rb").read()
    i = raw.find(b"data")
    n = int.from_bytes(raw[i + 4:i + 8], "little")
    return np.frombuffer(raw[i + 8:i + 8 + n], "<f4").astype(np.float64)
if kind == "codes":
    x, y = np.load(a), np.load(b)
    same = x.shape == y.shape and bool((x == y).all())
    frac = float((x == y).mean()) if x.shape == y.shape else 0.0
    print(f"{'identical' if same else 'DIFFER'} ({frac:.4f} equal, shape {x.shape})")
    sys.exit(0 if same else 1)
x, y = wav(a), wav(b)
if len(x) != len(y):
    print(f"DIFFER: lengths {len(x)} vs {len(y)}"); sys.exit(1)
cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))
print(f"cos {cos:.7f}, {len(x)} samples" + ("" if cos >= 0.99999 else " (BELOW 0.99999)"))
sys.exit(0 if cos >= 0.99999 else 1)
EOF
}

failures=0
fix="$repo/tests/fixtures"
parity_rows=()
check_fixture() { # NAME CHECKPOINT INPUT.wav [STREAM_MS]
    local name=$1 ckpt=$2 input=$3 stream=${4:-}
    local d="$work/$name" model="$work/$name/model.gguf"
    mkdir -p "$d"
    run "$bin" convert -q "$ckpt" -o "$model" || { failures=$((failures + 1)); parity_rows+=("| $name | convert failed | | |"); return; }
    local enc="" dec="" str="-"
    run "$bin" encode -q -m "$model" "$input" -o "$d/cpu.npy" --device cpu &&
        run "$bin" encode -q -m "$model" "$input" -o "$d/gpu.npy" --device "$device" &&
        enc=$(compare codes "$d/cpu.npy" "$d/gpu.npy") || { failures=$((failures + 1)); enc="FAILED ${enc}"; }
    run "$bin" decode -q -m "$model" "$d/cpu.npy" -o "$d/cpu.wav" --device cpu &&
        run "$bin" decode -q -m "$model" "$d/cpu.npy" -o "$d/gpu.wav" --device "$device" &&
        dec=$(compare audio "$d/cpu.wav" "$d/gpu.wav") || { failures=$((failures + 1)); dec="FAILED ${dec}"; }
    if [ -n "$stream" ]; then
        run "$bin" encode -q -m "$model" "$input" -o "$d/gpu-stream.npy" --device "$device" --stream-ms "$stream" &&
            str=$(compare codes "$d/cpu.npy" "$d/gpu-stream.npy") || { failures=$((failures + 1)); str="FAILED ${str}"; }
    fi
    # Batched: the input twice in one pass (the CLI batches several inputs) must give the single run's codes.
    local bat
    mkdir -p "$d/a" "$d/b" && cp "$input" "$d/a/x.wav" && cp "$input" "$d/b/y.wav"
    run "$bin" encode -q -m "$model" "$d/a/x.wav" "$d/b/y.wav" -o "$d/batch" --device "$device" &&
        bat=$(compare codes "$d/cpu.npy" "$d/batch/y.npy") || { failures=$((failures + 1)); bat="FAILED ${bat:-}"; }
    say "parity $name: encode $enc | decode $dec | stream $str | batch $bat"
    parity_rows+=("| $name | $enc | $dec | $str | $bat |")
}
check_fixture mimi "$fix/mimi/hub" "$fix/mimi/input.wav" 80
check_fixture dac-16khz "$fix/dac/16khz/original/weights.pth" "$fix/dac/16khz/input.wav" 200
check_fixture dac-24khz "$fix/dac/24khz/original/weights.pth" "$fix/dac/24khz/input.wav"
check_fixture dac-44khz "$fix/dac/44khz/original/weights.pth" "$fix/dac/44khz/input.wav"
check_fixture wavtokenizer-75 "$fix/wavtokenizer/frame75/original/model.ckpt" "$fix/wavtokenizer/frame75/input.wav"
check_fixture wavtokenizer-40 "$fix/wavtokenizer/frame40/original/model.ckpt" "$fix/wavtokenizer/frame40/input.wav"

# Full-size random-weight models, 10 s of audio: GPU batch 1 and 16, CPU batch 1 (all cores).
bench_rows=()
field() { # field FILE WHAT: "ms xRT" of the encode/decode line
    awk -v w="$1:" '$1 == w { gsub(/[()x]/, "", $6); print $2, $6 }' "$2"
}
for arch in mimi dac wavtokenizer; do
    cpu="$work/bench-$arch-cpu.txt"
    "$bin" bench -q --arch "$arch" --random --seconds "$seconds" --runs 1 >"$cpu" 2>&1 || say "FAILED: CPU bench $arch"
    cat "$cpu" >>"$log"
    for batch in 1 16; do
        f="$work/bench-$arch-$batch.txt"
        if ! "$bin" bench -q --arch "$arch" --random --device "$device" --seconds "$seconds" --runs 3 --batch "$batch" >"$f" 2>&1; then
            failures=$((failures + 1))
            say "FAILED: bench $arch batch $batch: $(tail -1 "$f")"
            continue
        fi
        cat "$f" >>"$log"
        read -r enc_ms enc_rt <<<"$(field encode "$f")"
        read -r dec_ms dec_rt <<<"$(field decode "$f")"
        read -r _ cpu_enc_rt <<<"$(field encode "$cpu")"
        read -r _ cpu_dec_rt <<<"$(field decode "$cpu")"
        vs=$("$python" -c "import sys; a,b,c,d = map(float, sys.argv[1:]); print(f'{a/c:.0f}x / {b/d:.0f}x')" \
            "$enc_rt" "$dec_rt" "${cpu_enc_rt:-nan}" "${cpu_dec_rt:-nan}" 2>/dev/null || echo "?")
        row="| $arch | $batch | $enc_ms | $dec_ms | ${enc_rt}x / ${dec_rt}x | $vs |"
        say "bench $row"
        bench_rows+=("$row")
    done
done

{
    echo "# codec-rs on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(date -u +%F)"
    echo
    echo "Parity (committed fixtures, --device "$device" against --device cpu):"
    echo
    echo "| fixture | encode codes | decode audio | stream encode codes | batched encode codes |"
    echo "| --- | --- | --- | --- | --- |"
    printf '%s\n' "${parity_rows[@]}"
    echo
    echo "Speed (full-size, random weights, $seconds s per clip, best of 3; CPU: $(nproc) logical CPUs, batch 1):"
    echo
    echo "| model | batch | encode ms | decode ms | x real time (enc / dec) | vs CPU (enc / dec) |"
    echo "| --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${bench_rows[@]}"
    echo
    echo "failures: $failures"
} >"$out/results.md"
cat "$out/results.md"
exit $((failures > 0))
