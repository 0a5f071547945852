/* The C API exercised from C, one case per run: `capi_test CASE DATA_DIR MIMI_HUB_DIR WAVTOKENIZER_CKPT`.
 * DATA_DIR holds what tests/c_api.rs prepared with the Rust API: converted models, fixture inputs and codes, and
 * the Rust API's own outputs as raw little-endian arrays (*.f32, *.u32). A failed check prints where and why and
 * exits 1; `all` runs every case (the AddressSanitizer and valgrind runs). */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static const char *data_dir, *mimi_hub_dir, *wavtokenizer_ckpt;

static void fail(const char *file, int line, const char *fmt, ...) {
    va_list args;
    fprintf(stderr, "%s:%d: ", file, line);
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fprintf(stderr, " (last error: \"%s\")\n", codec_last_error());
    exit(1);
}

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define CHECK_STATUS(call, want) \
    do { \
        codec_status got_ = (call); \
        CHECK(got_ == (want), "%s gave status %d, expected %d", #call, (int)got_, (int)(want)); \
    } while (0)
#define CHECK_OK(call) CHECK_STATUS(call, CODEC_OK)

/* A raw array DATA_DIR/name: its bytes, and the count of `size`-byte values. */
static void *read_array(const char *name, size_t size, size_t *count) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", data_dir, name);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    CHECK(bytes > 0 && (size_t)bytes % size == 0, "%s: %ld bytes", path, bytes);
    void *data = malloc((size_t)bytes);
    CHECK(data != NULL && fread(data, 1, (size_t)bytes, f) == (size_t)bytes, "cannot read %s", path);
    fclose(f);
    *count = (size_t)bytes / size;
    return data;
}

static char *data_path(const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", data_dir, name);
    return path;
}

static codec_model *load(const char *spec) {
    codec_params params = codec_default_params();
    params.n_threads = 2;
    codec_model *m = codec_load(spec, &params);
    CHECK(m != NULL, "cannot load %s", spec);
    CHECK(strcmp(codec_last_error(), "") == 0 && codec_last_status() == CODEC_OK, "a success leaves an error");
    return m;
}

/* Audio the same up to float rounding (decoders on different thread counts, or streamed): same length,
   cosine >= 0.99999, largest difference below 1e-3 of the peak. */
static void check_same_audio(const char *what, const float *got, size_t n_got, const float *want, size_t n_want) {
    CHECK(n_got == n_want, "%s: %zu samples, expected %zu", what, n_got, n_want);
    double dot = 0, ng = 0, nw = 0, diff = 0, peak = 0;
    for (size_t i = 0; i < n_got; i++) {
        dot += (double)got[i] * want[i];
        ng += (double)got[i] * got[i];
        nw += (double)want[i] * want[i];
        diff = fmax(diff, fabs((double)got[i] - want[i]));
        peak = fmax(peak, fabs((double)want[i]));
    }
    double cos = dot / sqrt(ng * nw);
    CHECK(cos >= 0.99999 && diff <= 1e-3 * peak, "%s: cos %.9f, max difference %g (peak %g)", what, cos, diff, peak);
}

/* Whether n codes are equal. */
static int same_codes(const uint32_t *got, const uint32_t *want, size_t n) {
    return memcmp(got, want, n * sizeof *got) == 0;
}

/* ---- reference: the Rust API's codes and audio, the buffer protocol, resampled input ---- */
static void case_reference(void) {
    size_t n_in, n_codes, n_dec, n_in16, n_codes16;
    float *input = read_array("mimi_input.f32", sizeof(float), &n_in);
    uint32_t *want = read_array("mimi_codes.u32", sizeof(uint32_t), &n_codes);
    float *decoded = read_array("mimi_decoded.f32", sizeof(float), &n_dec);
    float *input16 = read_array("mimi_input16k.f32", sizeof(float), &n_in16);
    uint32_t *want16 = read_array("mimi_codes16k.u32", sizeof(uint32_t), &n_codes16);
    CHECK(strcmp(codec_version(), CODEC_VERSION) == 0, "library %s, header %s", codec_version(), CODEC_VERSION);

    codec_model *m = load(data_path("mimi.gguf"));
    /* The first load sized the pools (2 threads), for candle through the environment; a later count is ignored. */
    CHECK(getenv("RAYON_NUM_THREADS") && strcmp(getenv("RAYON_NUM_THREADS"), "2") == 0, "RAYON_NUM_THREADS");
    codec_params three = codec_default_params();
    three.n_threads = 3;
    codec_model *again = codec_load(data_path("mimi.gguf"), &three);
    CHECK(again != NULL && strcmp(getenv("RAYON_NUM_THREADS"), "2") == 0, "a second load with 3 threads");
    codec_free(again);
    CHECK(strcmp(codec_arch(m), "mimi") == 0, "arch %s", codec_arch(m));
    CHECK(codec_sample_rate(m) == 24000 && codec_hop(m) == 1920, "rate %u hop %u", codec_sample_rate(m),
          codec_hop(m));
    CHECK(codec_max_n_q(m) == 8 && codec_codebook_size(m) == 64, "n_q %u codebook %u", codec_max_n_q(m),
          codec_codebook_size(m));
    size_t frames = codec_n_frames(m, n_in);
    CHECK(frames == (n_in + 1919) / 1920 && frames * 8 == n_codes, "%zu frames for %zu samples", frames, n_in);
    CHECK(codec_n_frames(m, 1) == 1 && codec_n_frames(m, 1920) == 1 && codec_n_frames(m, 1921) == 2, "n_frames");

    /* Size query, then a buffer one value short: BUFFER_TOO_SMALL with the frames set and nothing written. */
    size_t n_frames = 0;
    CHECK_STATUS(codec_encode(m, input, n_in, 24000, 0, NULL, 0, &n_frames), CODEC_ERR_BUFFER_TOO_SMALL);
    CHECK(n_frames == frames, "query: %zu frames, expected %zu", n_frames, frames);
    CHECK(strstr(codec_last_error(), "codes holds 0 values") != NULL, "message");
    uint32_t *codes = malloc(n_codes * sizeof *codes);
    for (size_t i = 0; i < n_codes; i++) codes[i] = 0xdeadbeef;
    n_frames = 0;
    CHECK_STATUS(codec_encode(m, input, n_in, 24000, 0, codes, n_codes - 1, &n_frames), CODEC_ERR_BUFFER_TOO_SMALL);
    CHECK(n_frames == frames, "short buffer: %zu frames", n_frames);
    for (size_t i = 0; i < n_codes; i++) CHECK(codes[i] == 0xdeadbeef, "a short buffer was written at %zu", i);

    /* The exact size: the fixture's reference codes. */
    CHECK_OK(codec_encode(m, input, n_in, 24000, 0, codes, n_codes, &n_frames));
    CHECK(n_frames == frames && same_codes(codes, want, n_codes), "codes differ from the reference");
    CHECK(strcmp(codec_last_error(), "") == 0, "a success leaves an error");

    /* n_q 3: the reference's first three codebooks. */
    uint32_t codes3[3 * 64];
    CHECK(3 * frames <= sizeof codes3 / sizeof *codes3, "fixture longer than expected");
    CHECK_OK(codec_encode(m, input, n_in, 24000, 3, codes3, 3 * frames, &n_frames));
    for (size_t q = 0; q < 3; q++)
        CHECK(same_codes(codes3 + q * frames, want + q * frames, frames), "n_q 3: codebook %zu differs", q);

    /* 16 kHz input is resampled as the Rust API resamples it. */
    size_t frames16 = n_codes16 / 8;
    uint32_t *codes16 = malloc(n_codes16 * sizeof *codes16);
    CHECK_OK(codec_encode(m, input16, n_in16, 16000, 0, codes16, n_codes16, &n_frames));
    CHECK(n_frames == frames16 && same_codes(codes16, want16, n_codes16), "16 kHz codes differ");

    /* Decode: query, short buffer, then the Rust API's audio. */
    size_t n_samples = 0, most = frames * 1920;
    CHECK_STATUS(codec_decode(m, want, 8, frames, NULL, 0, &n_samples), CODEC_ERR_BUFFER_TOO_SMALL);
    CHECK(n_samples == most, "decode query: %zu samples, expected %zu", n_samples, most);
    float *pcm = malloc(most * sizeof *pcm);
    pcm[0] = 42.0f;
    CHECK_STATUS(codec_decode(m, want, 8, frames, pcm, most - 1, &n_samples), CODEC_ERR_BUFFER_TOO_SMALL);
    CHECK(n_samples == most && pcm[0] == 42.0f, "short decode buffer");
    CHECK_OK(codec_decode(m, want, 8, frames, pcm, most, &n_samples));
    check_same_audio("decode", pcm, n_samples, decoded, n_dec);

    codec_free(m);
    free(pcm), free(codes16), free(codes), free(input16), free(want16), free(decoded), free(want), free(input);
}

/* ---- checkpoints: codec_load converts what `codec convert` reads ---- */
static void case_checkpoints(void) {
    size_t n_in, n_codes;
    float *input = read_array("mimi_input.f32", sizeof(float), &n_in);
    uint32_t *want = read_array("mimi_codes.u32", sizeof(uint32_t), &n_codes);
    uint32_t *codes = malloc(n_codes * sizeof *codes);
    size_t n_frames;
    codec_model *m = load(mimi_hub_dir);
    CHECK_OK(codec_encode(m, input, n_in, 24000, 0, codes, n_codes, &n_frames));
    CHECK(same_codes(codes, want, n_codes), "codes of the converted hub checkpoint differ");
    codec_free(m);
    free(codes), free(want), free(input);

    input = read_array("wavtokenizer_input.f32", sizeof(float), &n_in);
    want = read_array("wavtokenizer_codes.u32", sizeof(uint32_t), &n_codes);
    codes = malloc(n_codes * sizeof *codes);
    m = load(wavtokenizer_ckpt);
    CHECK(strcmp(codec_arch(m), "wavtokenizer") == 0 && codec_max_n_q(m) == 1, "arch %s", codec_arch(m));
    CHECK_OK(codec_encode(m, input, n_in, 24000, 0, codes, n_codes, &n_frames));
    CHECK(n_frames == n_codes && same_codes(codes, want, n_codes), "WavTokenizer codes differ");
    codec_free(m);
    free(codes), free(want), free(input);
}

/* ---- batch: the same as one call per item ---- */
static void case_batch(void) {
    size_t n_in, n_codes;
    float *input = read_array("mimi_input.f32", sizeof(float), &n_in);
    uint32_t *want = read_array("mimi_codes.u32", sizeof(uint32_t), &n_codes);
    codec_model *m = load(data_path("mimi.gguf"));
    enum { B = 3 };
    const float *pcm[B] = {input, input + 5000, input + 100};
    size_t n_samples[B] = {n_in, 20000, 1}, capacity[B], n_frames[B], single_frames;
    uint32_t *codes[B], *single[B];
    for (int i = 0; i < B; i++) {
        capacity[i] = 8 * codec_n_frames(m, n_samples[i]);
        codes[i] = malloc(capacity[i] * sizeof(uint32_t));
        single[i] = malloc(capacity[i] * sizeof(uint32_t));
        CHECK_OK(codec_encode(m, pcm[i], n_samples[i], 24000, 0, single[i], capacity[i], &single_frames));
        codes[i][0] = 0xdeadbeef;
    }
    /* One buffer short: every n_frames set, nothing written. */
    capacity[1] -= 1;
    CHECK_STATUS(codec_encode_batch(m, B, pcm, n_samples, 24000, 0, codes, capacity, n_frames),
                 CODEC_ERR_BUFFER_TOO_SMALL);
    CHECK(strstr(codec_last_error(), "codes[1]") != NULL, "the message names the item");
    for (int i = 0; i < B; i++) {
        CHECK(n_frames[i] == codec_n_frames(m, n_samples[i]), "item %d: %zu frames", i, n_frames[i]);
        CHECK(codes[i][0] == 0xdeadbeef, "item %d was written", i);
    }
    capacity[1] += 1;
    CHECK_OK(codec_encode_batch(m, B, pcm, n_samples, 24000, 0, (uint32_t *const *)codes, capacity, n_frames));
    for (int i = 0; i < B; i++)
        CHECK(same_codes(codes[i], single[i], capacity[i]), "batch item %d differs from its own encode", i);
    CHECK(same_codes(codes[0], want, n_codes), "batch codes differ from the reference");
    CHECK_OK(codec_encode_batch(m, 0, NULL, NULL, 24000, 0, NULL, NULL, NULL));

    /* Decode the batch's codes back, against one decode each. */
    float *out[B], *one;
    size_t pcm_capacity[B], n_out[B], n_one;
    for (int i = 0; i < B; i++) {
        pcm_capacity[i] = n_frames[i] * 1920;
        out[i] = malloc(pcm_capacity[i] * sizeof(float));
    }
    CHECK_OK(codec_decode_batch(m, B, (const uint32_t *const *)codes, 8, n_frames, out, pcm_capacity, n_out));
    for (int i = 0; i < B; i++) {
        one = malloc(pcm_capacity[i] * sizeof(float));
        CHECK_OK(codec_decode(m, codes[i], 8, n_frames[i], one, pcm_capacity[i], &n_one));
        check_same_audio("batch decode", out[i], n_out[i], one, n_one);
        free(one);
    }
    pcm_capacity[2] = 0;
    CHECK_STATUS(codec_decode_batch(m, B, (const uint32_t *const *)codes, 8, n_frames, out, pcm_capacity, n_out),
                 CODEC_ERR_BUFFER_TOO_SMALL);
    for (int i = 0; i < B; i++) CHECK(n_out[i] == n_frames[i] * 1920, "item %d: %zu samples needed", i, n_out[i]);

    for (int i = 0; i < B; i++) free(codes[i]), free(single[i]), free(out[i]);
    codec_free(m);
    free(want), free(input);
}

/* ---- streams: pieces of many sizes give the offline codes and audio ---- */

/* Streams `input` through an encoder in pieces cycling through `cuts`, flushes, and compares with `want`
   (n_q x frames). Starts each push with a buffer too small when it can, to check the retry. */
static void stream_encode_equals(codec_stream *s, const char *what, const float *input, size_t n_in,
                                 const uint32_t *want, size_t n_q, size_t frames, const size_t *cuts, size_t n_cuts) {
    uint32_t *rows = calloc(n_q * frames, sizeof *rows), *buf = malloc(n_q * frames * sizeof *buf);
    size_t done = 0, at = 0, got, k = 0, ceiling = n_q * frames;
    for (int last = 0; !last; k++) {
        size_t n = cuts[k % n_cuts] < n_in - at ? cuts[k % n_cuts] : n_in - at;
        last = at + n == n_in;
        codec_status st = codec_stream_encode(s, input + at, n, buf, 0, &got);
        if (st == CODEC_ERR_BUFFER_TOO_SMALL) {
            CHECK(got > 0 && got * n_q <= ceiling, "%s: bound %zu frames", what, got);
            CHECK_OK(codec_stream_encode(s, input + at, n, buf, got * n_q, &got));
        } else {
            CHECK(st == CODEC_OK && got == 0, "%s: push with no room gave status %d, %zu frames", what, st, got);
        }
        CHECK(done + got <= frames, "%s: too many frames", what);
        for (size_t q = 0; q < n_q; q++) memcpy(rows + q * frames + done, buf + q * got, got * sizeof *buf);
        done += got, at += n;
    }
    /* The flush's bound is exactly what is left; with nothing left the query itself flushes. */
    codec_status st = codec_stream_flush(s, NULL, 0, &got, NULL, 0, NULL);
    CHECK(st == (done < frames ? CODEC_ERR_BUFFER_TOO_SMALL : CODEC_OK) && got == frames - done,
          "%s: flush query gave status %d, %zu frames", what, st, got);
    if (st == CODEC_ERR_BUFFER_TOO_SMALL) CHECK_OK(codec_stream_flush(s, buf, n_q * frames, &got, NULL, 0, NULL));
    for (size_t q = 0; q < n_q; q++) memcpy(rows + q * frames + done, buf + q * got, got * sizeof *buf);
    done += got;
    CHECK(done == frames && same_codes(rows, want, n_q * frames), "%s: streamed codes differ from offline", what);
    free(buf), free(rows);
}

/* Streams `codes` (n_q x frames) through a decoder `cut` frames at a time and compares with `want`. */
static void stream_decode_equals(codec_stream *s, const char *what, const uint32_t *codes, size_t n_q, size_t frames,
                                 size_t hop, size_t cut, const float *want, size_t n_want) {
    float *out = malloc(frames * hop * sizeof *out), *buf = malloc(frames * hop * sizeof *buf);
    uint32_t *piece = malloc(n_q * cut * sizeof *piece);
    size_t done = 0, got;
    for (size_t f = 0; f < frames; f += cut) {
        size_t n = cut < frames - f ? cut : frames - f;
        for (size_t q = 0; q < n_q; q++) memcpy(piece + q * n, codes + q * frames + f, n * sizeof *piece);
        CHECK_STATUS(codec_stream_decode(s, piece, (uint32_t)n_q, n, NULL, 0, &got), CODEC_ERR_BUFFER_TOO_SMALL);
        CHECK_OK(codec_stream_decode(s, piece, (uint32_t)n_q, n, buf, got, &got));
        memcpy(out + done, buf, got * sizeof *buf);
        done += got;
    }
    CHECK_OK(codec_stream_flush(s, NULL, 0, NULL, buf, frames * hop, &got));
    memcpy(out + done, buf, got * sizeof *buf);
    check_same_audio(what, out, done + got, want, n_want);
    free(piece), free(buf), free(out);
}

static void case_stream(void) {
    static const size_t cuts[] = {1, 7, 1919, 1920, 1921, 4000, 333, 30000};
    static const char *models[] = {"mimi", "dac", "wavtokenizer"};
    for (int i = 0; i < 3; i++) {
        char name[64];
        size_t n_in, n_codes, n_dec;
        snprintf(name, sizeof name, "%s_input.f32", models[i]);
        float *input = read_array(name, sizeof(float), &n_in);
        snprintf(name, sizeof name, "%s_codes.u32", models[i]);
        uint32_t *want = read_array(name, sizeof(uint32_t), &n_codes);
        snprintf(name, sizeof name, "%s.gguf", models[i]);
        codec_model *m = load(data_path(name));
        size_t n_q = codec_max_n_q(m), frames = n_codes / n_q, hop = codec_hop(m);
        codec_stream *enc = codec_stream_encoder(m, 0);
        CHECK(enc != NULL, "%s: no stream encoder", models[i]);
        codec_stream *dec = codec_stream_decoder(m);
        codec_status dec_status = codec_last_status();
        if (i == 2) {
            CHECK(dec == NULL && dec_status == CODEC_ERR_UNSUPPORTED, "WavTokenizer's decoder streams?");
            CHECK(strstr(codec_last_error(), "cannot stream") != NULL, "message");
        }
        codec_free(m); /* streams hold their own reference */
        stream_encode_equals(enc, models[i], input, n_in, want, n_q, frames, cuts, 8);
        /* After a flush pushes fail until a reset; then the stream runs again, in other pieces. */
        size_t got;
        CHECK_STATUS(codec_stream_encode(enc, input, 1, NULL, 0, &got), CODEC_ERR_INVALID_ARG);
        CHECK_OK(codec_stream_reset(enc));
        stream_encode_equals(enc, models[i], input, n_in, want, n_q, frames, cuts + 3, 5);
        CHECK_STATUS(codec_stream_decode(enc, want, (uint32_t)n_q, 1, NULL, 0, &got), CODEC_ERR_INVALID_ARG);
        codec_stream_free(enc);

        if (i != 2) {
            CHECK(dec != NULL, "%s: no stream decoder", models[i]);
            snprintf(name, sizeof name, "%s_decoded.f32", models[i]);
            float *decoded = read_array(name, sizeof(float), &n_dec);
            stream_decode_equals(dec, models[i], want, n_q, frames, hop, 1, decoded, n_dec);
            CHECK_OK(codec_stream_reset(dec));
            stream_decode_equals(dec, models[i], want, n_q, frames, hop, 3, decoded, n_dec);
            CHECK_STATUS(codec_stream_encode(dec, input, 1, NULL, 0, &got), CODEC_ERR_INVALID_ARG);
            codec_stream_free(dec);
            free(decoded);
        }
        free(want), free(input);
    }
}

/* ---- errors: every status reached on purpose, each with a message ---- */
static void expect_error(codec_status got, codec_status want, const char *needle, int line) {
    if (got != want) fail(__FILE__, line, "status %d, expected %d", (int)got, (int)want);
    if (strstr(codec_last_error(), needle) == NULL)
        fail(__FILE__, line, "message \"%s\" lacks \"%s\"", codec_last_error(), needle);
    if (codec_last_status() != want) fail(__FILE__, line, "last status %d", (int)codec_last_status());
}
#define EXPECT_ERROR(call, want, needle) expect_error((call), (want), (needle), __LINE__)
#define LOAD_STATUS(spec, params) (codec_load((spec), (params)) == NULL ? codec_last_status() : CODEC_OK)

static void case_errors(void) {
    codec_params params = codec_default_params();
    CHECK(params.n_threads == 0 && params.device == CODEC_DEVICE_CPU, "default params");

    /* Loading. */
    EXPECT_ERROR(LOAD_STATUS(NULL, &params), CODEC_ERR_INVALID_ARG, "model is NULL");
    EXPECT_ERROR(LOAD_STATUS(data_path("mimi.gguf"), NULL), CODEC_ERR_INVALID_ARG, "params is NULL");
    EXPECT_ERROR(LOAD_STATUS("/nonexistent/dir/model.gguf", &params), CODEC_ERR_IO, "/nonexistent/dir/model.gguf");
    EXPECT_ERROR(LOAD_STATUS(data_path("garbage.gguf"), &params), CODEC_ERR_MODEL, "garbage.gguf");
    EXPECT_ERROR(LOAD_STATUS(data_path("garbage.safetensors"), &params), CODEC_ERR_MODEL, "garbage.safetensors");
    EXPECT_ERROR(LOAD_STATUS("\xff\xfe", &params), CODEC_ERR_INVALID_ARG, "UTF-8");
    codec_params bad = params;
    bad.n_threads = -1;
    EXPECT_ERROR(LOAD_STATUS(data_path("mimi.gguf"), &bad), CODEC_ERR_INVALID_ARG, "n_threads");
    bad = params;
    bad.device = (codec_device)7;
    EXPECT_ERROR(LOAD_STATUS(data_path("mimi.gguf"), &bad), CODEC_ERR_INVALID_ARG, "params.device 7");
    bad.device = CODEC_DEVICE_METAL; /* not in this build (Linux) */
    EXPECT_ERROR(LOAD_STATUS(data_path("mimi.gguf"), &bad), CODEC_ERR_UNSUPPORTED, "metal");

    /* Model queries on NULL. */
    EXPECT_ERROR(codec_sample_rate(NULL) == 0 ? codec_last_status() : CODEC_OK, CODEC_ERR_INVALID_ARG, "model");
    CHECK(strcmp(codec_arch(NULL), "") == 0 && codec_hop(NULL) == 0 && codec_n_frames(NULL, 5) == 0, "NULL model");
    codec_free(NULL);
    codec_stream_free(NULL);
    CHECK(codec_last_status() == CODEC_OK && strcmp(codec_last_error(), "") == 0, "freeing NULL is no error");

    codec_model *m = load(data_path("mimi.gguf"));
    float pcm[4000];
    for (int i = 0; i < 4000; i++) pcm[i] = 0.3f * sinf(0.05f * (float)i);
    uint32_t codes[8 * 3];
    float out[3 * 1920];
    size_t n;

    /* Encode. */
    EXPECT_ERROR(codec_encode(NULL, pcm, 4000, 24000, 0, codes, 24, &n), CODEC_ERR_INVALID_ARG, "model is NULL");
    EXPECT_ERROR(codec_encode(m, NULL, 4000, 24000, 0, codes, 24, &n), CODEC_ERR_INVALID_ARG, "pcm is NULL");
    EXPECT_ERROR(codec_encode(m, pcm, 4000, 24000, 0, codes, 24, NULL), CODEC_ERR_INVALID_ARG, "n_frames is NULL");
    EXPECT_ERROR(codec_encode(m, pcm, 4000, 24000, 0, NULL, 24, &n), CODEC_ERR_INVALID_ARG, "codes is NULL");
    EXPECT_ERROR(codec_encode(m, pcm, 4000, 24000, 9, codes, 24, &n), CODEC_ERR_INVALID_ARG, "n_q 9 exceeds");
    EXPECT_ERROR(codec_encode(m, pcm, 0, 24000, 0, codes, 24, &n), CODEC_ERR_INVALID_ARG, "empty");
    EXPECT_ERROR(codec_encode(m, pcm, 4000, 0, 0, codes, 24, &n), CODEC_ERR_INVALID_ARG, "sample_rate 0");
    EXPECT_ERROR(codec_encode(m, pcm, 4000, 999, 0, codes, 24, &n), CODEC_ERR_INVALID_ARG, "sample_rate 999");
    EXPECT_ERROR(codec_encode(m, pcm, SIZE_MAX, 24000, 0, codes, 24, &n), CODEC_ERR_INVALID_ARG, "more than memory");
    pcm[17] = NAN;
    EXPECT_ERROR(codec_encode(m, pcm, 4000, 24000, 0, codes, 24, &n), CODEC_ERR_INVALID_ARG, "sample 17");
    pcm[17] = 0.0f;
    EXPECT_ERROR(codec_encode(m, pcm, 4000, 24000, 0, codes, 23, &n), CODEC_ERR_BUFFER_TOO_SMALL, "24 are needed");
    CHECK(n == 3, "%zu frames needed", n);
    CHECK_OK(codec_encode(m, pcm, 4000, 24000, 0, codes, 24, &n));

    /* Decode. */
    EXPECT_ERROR(codec_decode(m, NULL, 8, 3, out, 5760, &n), CODEC_ERR_INVALID_ARG, "codes is NULL");
    EXPECT_ERROR(codec_decode(m, codes, 0, 3, out, 5760, &n), CODEC_ERR_INVALID_ARG, "n_q must be at least 1");
    EXPECT_ERROR(codec_decode(m, codes, 9, 2, out, 5760, &n), CODEC_ERR_INVALID_ARG, "n_q 9 exceeds");
    EXPECT_ERROR(codec_decode(m, codes, 8, 0, out, 5760, &n), CODEC_ERR_INVALID_ARG, "zero frames");
    EXPECT_ERROR(codec_decode(m, codes, 8, 3, out, 5760, NULL), CODEC_ERR_INVALID_ARG, "n_samples is NULL");
    EXPECT_ERROR(codec_decode(m, codes, 8, SIZE_MAX, out, 5760, &n), CODEC_ERR_INVALID_ARG, "overflows");
    uint32_t saved = codes[5];
    codes[5] = 64;
    EXPECT_ERROR(codec_decode(m, codes, 8, 3, out, 5760, &n), CODEC_ERR_INVALID_ARG, "out of range");
    codes[5] = saved;
    EXPECT_ERROR(codec_decode(m, codes, 8, 3, out, 5759, &n), CODEC_ERR_BUFFER_TOO_SMALL, "5760 are needed");
    CHECK_OK(codec_decode(m, codes, 8, 3, out, 5760, &n));
    CHECK(n == 5760, "%zu samples", n);

    /* Batches. */
    const float *pcms[2] = {pcm, NULL};
    size_t lens[2] = {4000, 4000}, caps[2] = {24, 24}, frames[2];
    uint32_t *outs[2] = {codes, codes};
    EXPECT_ERROR(codec_encode_batch(m, 2, NULL, lens, 24000, 0, outs, caps, frames), CODEC_ERR_INVALID_ARG,
                 "pcm is NULL");
    EXPECT_ERROR(codec_encode_batch(m, 2, pcms, lens, 24000, 0, outs, caps, frames), CODEC_ERR_INVALID_ARG,
                 "pcm[1] is NULL");
    EXPECT_ERROR(codec_decode_batch(m, 2, NULL, 8, frames, NULL, caps, frames), CODEC_ERR_INVALID_ARG,
                 "codes is NULL");

    /* Streams. */
    CHECK(codec_stream_encoder(NULL, 0) == NULL && codec_last_status() == CODEC_ERR_INVALID_ARG, "NULL model");
    CHECK(codec_stream_encoder(m, 9) == NULL && codec_last_status() == CODEC_ERR_INVALID_ARG, "n_q 9");
    codec_stream *enc = codec_stream_encoder(m, 2), *dec = codec_stream_decoder(m);
    CHECK(enc != NULL && dec != NULL, "streams");
    EXPECT_ERROR(codec_stream_encode(NULL, pcm, 10, codes, 24, &n), CODEC_ERR_INVALID_ARG, "stream is NULL");
    EXPECT_ERROR(codec_stream_encode(enc, pcm, 4000, codes, 3, &n), CODEC_ERR_BUFFER_TOO_SMALL, "4 are needed");
    CHECK(n == 2, "an encoder push of 4000 samples gives at most 2 frames, not %zu", n);
    pcm[3] = INFINITY;
    EXPECT_ERROR(codec_stream_encode(enc, pcm, 4000, codes, 24, &n), CODEC_ERR_INVALID_ARG, "sample 3");
    pcm[3] = 0.0f;
    CHECK_OK(codec_stream_encode(enc, pcm, 4000, codes, 24, &n));
    EXPECT_ERROR(codec_stream_flush(enc, codes, 24, NULL, out, 10, &n), CODEC_ERR_INVALID_ARG, "n_frames is NULL");
    EXPECT_ERROR(codec_stream_decode(dec, codes, 2, 1, out, 1920, NULL), CODEC_ERR_INVALID_ARG, "n_samples");
    CHECK_OK(codec_stream_decode(dec, codes, 2, 1, out, 1920, &n));
    EXPECT_ERROR(codec_stream_decode(dec, codes, 3, 1, out, 5760, &n), CODEC_ERR_INVALID_ARG, "earlier pushes had 2");
    EXPECT_ERROR(codec_stream_reset(NULL), CODEC_ERR_INVALID_ARG, "stream is NULL");
    codec_stream_free(enc);
    codec_stream_free(dec);
    codec_free(m);
}

/* ---- threads: one model shared by several threads; errors are per thread ---- */
struct worker {
    codec_model *m;
    const float *input;
    size_t n_in;
    const uint32_t *want;
    size_t n_codes;
    const float *decoded;
    size_t n_dec;
    int id;
};

static void *work(void *arg) {
    struct worker *w = arg;
    uint32_t *codes = malloc(w->n_codes * sizeof *codes);
    float *pcm = malloc(w->n_codes / 8 * 1920 * sizeof *pcm);
    size_t n;
    for (int round = 0; round < 3; round++) {
        CHECK_OK(codec_encode(w->m, w->input, w->n_in, 24000, 0, codes, w->n_codes, &n));
        CHECK(same_codes(codes, w->want, w->n_codes), "thread %d: codes differ", w->id);
        CHECK_OK(codec_decode(w->m, codes, 8, n, pcm, n * 1920, &n));
        check_same_audio("threaded decode", pcm, n, w->decoded, w->n_dec);
        /* An error on this thread is this thread's only. */
        if ((w->id + round) % 2 == 0) {
            CHECK(codec_encode(w->m, NULL, 1, 24000, 0, codes, 8, &n) == CODEC_ERR_INVALID_ARG, "NULL pcm");
            CHECK(strstr(codec_last_error(), "pcm is NULL") != NULL, "thread %d: message", w->id);
        }
    }
    free(pcm), free(codes);
    return NULL;
}

static void case_threads(void) {
    enum { T = 4 };
    struct worker w = {load(data_path("mimi.gguf")), 0, 0, 0, 0, 0, 0, 0};
    w.input = read_array("mimi_input.f32", sizeof(float), &w.n_in);
    w.want = read_array("mimi_codes.u32", sizeof(uint32_t), &w.n_codes);
    w.decoded = read_array("mimi_decoded.f32", sizeof(float), &w.n_dec);
    pthread_t threads[T];
    struct worker workers[T];
    for (int i = 0; i < T; i++) {
        workers[i] = w;
        workers[i].id = i;
        CHECK(pthread_create(&threads[i], NULL, work, &workers[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < T; i++) CHECK(pthread_join(threads[i], NULL) == 0, "pthread_join");
    CHECK(codec_last_status() == CODEC_OK, "other threads' errors leaked to this one");
    codec_free(w.m);
    free((void *)w.decoded), free((void *)w.want), free((void *)w.input);
}

int main(int argc, char **argv) {
    static const struct {
        const char *name;
        void (*run)(void);
    } cases[] = {{"reference", case_reference}, {"checkpoints", case_checkpoints}, {"batch", case_batch},
                 {"stream", case_stream},       {"errors", case_errors},           {"threads", case_threads}};
    if (argc != 5) {
        fprintf(stderr, "usage: %s CASE|all DATA_DIR MIMI_HUB_DIR WAVTOKENIZER_CKPT\n", argv[0]);
        return 2;
    }
    data_dir = argv[2], mimi_hub_dir = argv[3], wavtokenizer_ckpt = argv[4];
    int ran = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        if (strcmp(argv[1], "all") == 0 || strcmp(argv[1], cases[i].name) == 0) {
            cases[i].run();
            printf("ok %s\n", cases[i].name);
            ran++;
        }
    }
    CHECK(ran > 0, "no case named %s", argv[1]);
    return 0;
}
