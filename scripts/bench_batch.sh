#!/usr/bin/env bash
# Batched vs one-by-one throughput of the whole `codec` process (issue 10's benchmark): 8 clips of 3-12 s, encoded
# with --batch-size 8 and with --batch-size 1, then their codes decoded both ways; hyperfine, side by side.
#
#   scripts/bench_batch.sh MODEL.gguf... [-- hyperfine options]   (CODEC=path/to/codec, THREADS=2 by default)
#
# Prints audio seconds per wall second for each model and mode. (hyperfine -N runs no shell: globs expand here.)
set -euo pipefail
codec="${CODEC:-target/release/codec}"
threads="${THREADS:-2}"
models=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do models+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if [ ${#models[@]} -eq 0 ]; then
    echo "usage: $0 MODEL.gguf... [-- hyperfine options]" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
total=0
for s in 3 4 5 7 8 9 11 12; do
    # A chirp with harmonics and a little noise: deterministic, and not silence.
    sox -n -r 24000 -c 1 -b 16 "$work/clip$s.wav" synth "$s" sine 120-900 sine 360-2700 whitenoise vol 0.3 2>/dev/null
    total=$((total + s))
done
echo "8 clips, $total s of audio, $threads threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for model in "${models[@]}"; do
    name=$(basename "$model" .gguf)
    "$codec" encode -q --threads "$threads" -m "$model" "$work"/clip*.wav -o "$work/codes-$name"
    for dir in encode decode; do
        if [ $dir = encode ]; then
            cmd="$codec encode -q --threads $threads -m $model $(echo "$work"/clip*.wav) -o $work/out-$name"
        else
            cmd="$codec decode -q --threads $threads -m $model $(echo "$work/codes-$name"/*.npy) -o $work/wav-$name"
        fi
        hyperfine -N --style none --export-json "$work/$name-$dir.json" "$@" \
            -n batched "$cmd --batch-size 8" -n one-by-one "$cmd --batch-size 1" >/dev/null
        python3 - "$work/$name-$dir.json" "$name" "$dir" "$total" <<'EOF'
import json, sys
runs = {r["command"]: r["mean"] for r in json.load(open(sys.argv[1]))["results"]}
name, what, total = sys.argv[2], sys.argv[3], float(sys.argv[4])
b, o = runs["batched"], runs["one-by-one"]
print(f"{name:10} {what}: batched {b:6.2f} s ({total / b:5.1f}x real time), one by one {o:6.2f} s "
      f"({total / o:5.1f}x), batched/one-by-one throughput {o / b:.2f}x")
EOF
    done
done
