#!/usr/bin/env bash
# Dataset throughput (issue 12): `codec tokenize` against a plain loop of `codec encode` over the same files, in hours
# of audio per hour of wall time, at THREADS threads (default 2).
#
#   scripts/bench_tokenize.sh MODEL.gguf...        (CODEC=path/to/codec; FILES=40 clips of 4-16 s by default)
set -euo pipefail
codec="${CODEC:-target/release/codec}"
threads="${THREADS:-2}"
files="${FILES:-40}"
[ $# -gt 0 ] || { echo "usage: $0 MODEL.gguf..." >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
total=0
for i in $(seq 1 "$files"); do
    s=$((4 + (i * 7) % 13))
    rate=$(( (i % 3 == 0) ? 16000 : (i % 3 == 1) ? 24000 : 44100 ))
    sox -n -r "$rate" -c 1 -b 16 "$work/clip$i.wav" synth "$s" sine $((100 + i * 10))-$((900 + i * 20)) whitenoise vol 0.3 2>/dev/null
    total=$((total + s))
done
hours=$(python3 -c "print($total / 3600)")
echo "$files files, $total s of audio (16/24/44.1 kHz), $threads threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
for model in "$@"; do
    name=$(basename "$model" .gguf)
    rm -rf "$work/out"
    t0=$(date +%s.%N)
    "$codec" tokenize -q --threads "$threads" -m "$model" "$work" -o "$work/out" 2>/dev/null
    t1=$(date +%s.%N)
    for f in "$work"/clip*.wav; do
        "$codec" encode -q --threads "$threads" -m "$model" "$f" -o "$work/one.npy"
    done
    t2=$(date +%s.%N)
    python3 -c "
h, a, b = $hours, $t1 - $t0, $t2 - $t1
print(f'{\"$name\":10} tokenize {a:6.1f} s ({h * 3600 / a:5.0f} h/h)   loop of codec encode {b:6.1f} s ({h * 3600 / b:5.0f} h/h)   {b / a:.2f}x')"
done
