/* Warm encode and decode calls through the C API, as an embedding program makes them: a benchmark, not a test.
 *
 *   cargo build --release -p codec-capi
 *   cc -O2 examples/c/bench.c -Iinclude -Ltarget/release -lcodec -lm -Wl,-rpath,$PWD/target/release -o codec-bench
 *   ./codec-bench MODEL.gguf [SECONDS] [THREADS] [CALLS]
 *
 * Loads MODEL, makes SECONDS (default 10) of a synthetic chirp at the model's rate, then times CALLS (default 5)
 * codec_encode calls with every codebook and as many codec_decode calls of the codes, and prints each call's ms.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "codec.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, codec_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [SECONDS] [THREADS] [CALLS]\n", argv[0]);
        return 2;
    }
    double seconds = argc > 2 ? atof(argv[2]) : 10.0;
    int calls = argc > 4 ? atoi(argv[4]) : 5;
    codec_params params = codec_default_params();
    params.n_threads = argc > 3 ? atoi(argv[3]) : 0;
    if (seconds <= 0 || calls <= 0) {
        fprintf(stderr, "SECONDS and CALLS must be positive\n");
        return 2;
    }
    codec_model *m = codec_load(argv[1], &params);
    if (!m) return fail(argv[1]);
    uint32_t rate = codec_sample_rate(m), n_q = codec_max_n_q(m);
    size_t n = (size_t)(seconds * rate);
    size_t frames = codec_n_frames(m, n), hop = codec_hop(m), n_frames = 0, n_samples = 0;
    float *pcm = malloc(n * sizeof *pcm);
    uint32_t *codes = malloc((size_t)n_q * frames * sizeof *codes);
    float *out = malloc(frames * hop * sizeof *out);
    if (!pcm || !codes || !out) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        double t = (double)i / rate, f = 110.0 + 40.0 * t;
        pcm[i] = (float)(0.3 * sin(2 * M_PI * f * t) + 0.1 * sin(6 * M_PI * f * t));
    }
    printf("%s: %.1f s at %u Hz, %u codebooks; ms per call\nencode", argv[1], seconds, rate, n_q);
    for (int c = 0; c < calls; c++) {
        double t = now();
        if (codec_encode(m, pcm, n, rate, n_q, codes, (size_t)n_q * frames, &n_frames) != CODEC_OK)
            return fail("codec_encode");
        printf(" %.0f", (now() - t) * 1e3);
    }
    printf("\ndecode");
    for (int c = 0; c < calls; c++) {
        double t = now();
        if (codec_decode(m, codes, n_q, n_frames, out, frames * hop, &n_samples) != CODEC_OK)
            return fail("codec_decode");
        printf(" %.0f", (now() - t) * 1e3);
    }
    printf("\n");
    codec_free(m);
    free(pcm);
    free(codes);
    free(out);
    return 0;
}
