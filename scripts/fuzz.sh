#!/usr/bin/env bash
# Fuzzes every reader with cargo-fuzz (libFuzzer): scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds all targets in fuzz/ once, then runs each for SECONDS (default 600) on a corpus seeded from fuzz/seeds/<target>
# and the committed fixtures (tests/fixtures), one target at a time, one process each. Prints, per target, the execs,
# the coverage (libFuzzer's final cov/ft) and whether it crashed; exits non-zero if any target crashed, timed out or ran
# out of memory (the input is kept under fuzz/artifacts/<target>/ for a regression test).
#
# Works on the stable toolchain: cargo-fuzz passes -Z flags, so RUSTC_BOOTSTRAP=1 is set. Installs cargo-fuzz if it is
# missing. Environment:
#   FUZZ_SANITIZER   address (default) or none (faster; what CI uses)
#   FUZZ_TARGET_DIR  cargo target dir for the fuzz build (default fuzz/target; CI caches it under $HOME/.cache)
#   FUZZ_CORPUS_DIR  where the working corpora grow (default fuzz/corpus, git-ignored; kept between runs)
#   FUZZ_RSS_MB      libFuzzer -rss_limit_mb (default 2048); a single exec over 10 s is a timeout (-timeout=10)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-600}
shift || true
all_targets=(gguf npy audio pth ckpt safetensors codes)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
target_dir=${FUZZ_TARGET_DIR:-$root/fuzz/target}
corpus_root=${FUZZ_CORPUS_DIR:-$root/fuzz/corpus}
rss_mb=${FUZZ_RSS_MB:-2048}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
build_start=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir" >/dev/null
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release
echo "   built in $(( $(date +%s) - build_start )) s"

# One input made of a sibling text file and a main file, as codec_fuzz::split reads it: [u16 LE length][text][main].
pair() {  # pair TEXT MAIN OUT
    local n
    n=$(wc -c <"$1")
    if [ "$n" -gt 65535 ]; then echo "$1 is too large for a fuzz seed" >&2; exit 1; fi
    { printf "\\$(printf %03o $((n & 255)))\\$(printf %03o $((n >> 8)))"; cat "$1" "$2"; } >"$3"
}
prefixed() {  # prefixed BYTE FILE OUT
    { printf "\\$(printf %03o "$1")"; cat "$2"; } >"$3"
}

# Seeds that live in the fixtures (too large to commit twice) are assembled here.
fixture_seeds() {  # fixture_seeds TARGET DIR
    local fx=$root/tests/fixtures d=$2
    case $1 in
        gguf)
            # The codes target converts the three fixture models (f16, q8_0, f32) on its first input: keep its files.
            local tmp
            tmp=$(mktemp -d "$scratch/gguf-seeds.XXXXXX")
            CODEC_FUZZ_TMP=$tmp "$bin_dir/codes" "$root/fuzz/seeds/codes/raw_model0.bin" >"$tmp/log" 2>&1 \
                || { cat "$tmp/log" >&2; exit 1; }
            cp "$tmp"/codec-fuzz-*/codes-*.gguf "$d/" ;;
        pth)
            for r in 16khz 44khz; do cp "$fx/dac/$r/original/weights.pth" "$d/dac_$r.pth"; done ;;
        ckpt)
            for v in frame40 frame75; do
                pair "$fx/wavtokenizer/$v/original/config.yaml" "$fx/wavtokenizer/$v/original/model.ckpt" "$d/$v.bin"
            done ;;
        safetensors)
            pair "$fx/dac/16khz/hub/config.json" "$fx/dac/16khz/hub/model.safetensors" "$d/dac_16khz_hub.bin"
            pair "$fx/mimi/hub/config.json" "$fx/mimi/hub/model.safetensors" "$d/mimi_hub.bin"
            pair "$fx/mimi/original/config.json" "$fx/mimi/original/model.safetensors" "$d/mimi_original.bin" ;;
        npy)
            cp "$fx/mimi/codes_nq3.npy" "$d/mimi_codes_nq3.npy"
            cp "$fx/dac/16khz/codes_nq2.npy" "$d/dac_codes_nq2.npy"
            cp "$fx/wavtokenizer/frame40/codes.npy" "$d/wt40_codes.npy" ;;
        audio)
            prefixed 0 "$fx/dac/16khz/input.wav" "$d/dac_16khz_input.wav.bin" ;;
        codes)
            prefixed 0 "$fx/mimi/codes_nq3.npy" "$d/mimi_nq3.bin"
            prefixed 1 "$fx/dac/16khz/codes_nq2.npy" "$d/dac_nq2.bin"
            prefixed 2 "$fx/wavtokenizer/frame40/codes.npy" "$d/wt40.bin" ;;
    esac
}

scratch_base=${TMPDIR:-/tmp}
[ -d /dev/shm ] && [ -w /dev/shm ] && scratch_base=/dev/shm
scratch=$(mktemp -d "$scratch_base/codec-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export CODEC_FUZZ_TMP=$scratch
# One thread per fuzzer: libFuzzer runs one input at a time, and a machine shared with other work keeps its cores.
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus=$corpus_root/$t
    artifacts=$root/fuzz/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    if [ -d "$root/fuzz/seeds/$t" ]; then cp "$root/fuzz/seeds/$t"/* "$corpus/"; fi
    fixture_seeds "$t" "$corpus"
    log=$scratch/$t.log
    echo "== $t: ${seconds} s, corpus $corpus ($(ls "$corpus" | wc -l) files)"
    rc=0
    "$bin_dir/$t" "$corpus" -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    status=ok
    if [ "$rc" -ne 0 ]; then
        status="CRASHED (exit $rc)"
        failed+=("$t")
        echo "---- $t: last lines of the libFuzzer log"
        grep -v '^#[0-9]' "$log" | tail -40
        cp "$log" "$artifacts/last-run.log"
    fi
    line=$(printf '%-12s execs %-10s exec/s %-6s cov %-6s ft %-6s corpus %-5s peak RSS %s MB  %s' "$t" "${execs:-?}" \
        "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${rss:-?}" "$status")
    echo "$line"
    summary+=("$line")
done

echo "== summary (${seconds} s per target, sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
