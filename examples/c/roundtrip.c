/* roundtrip: WAV -> codes -> WAV through the codec-rs C API.
 *
 *     cargo build --release -p codec-capi
 *     cc examples/c/roundtrip.c -Iinclude -Ltarget/release -lcodec -Wl,-rpath,$PWD/target/release -o roundtrip
 *     ./roundtrip MODEL IN.wav OUT.wav [N_Q]
 *
 * MODEL: a .gguf, a checkpoint `codec convert` reads, or a hub id (kyutai/mimi). IN.wav: 16/24/32-bit PCM or 32-bit
 * float, any rate (the library resamples), any channel count (averaged to mono). OUT.wav: 32-bit float mono at the
 * model's rate, as long as the input. The WAV reader below is deliberately minimal (little-endian RIFF only). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* One sample of `bits` at p as a float in [-1, 1): integer PCM (16, 24, 32 bits) or IEEE float (32 bits). */
static float sample_at(const unsigned char *p, int is_float, unsigned bits) {
    if (is_float) {
        uint32_t u = le32(p);
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    switch (bits) {
    case 16: return (float)(int16_t)le16(p) / 32768.0f;
    case 24: return (float)((int32_t)((uint32_t)p[0] << 8 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 24) >> 8) / 8388608.0f;
    default: return (float)(int32_t)le32(p) / 2147483648.0f;
    }
}

/* Reads a WAV file as mono float samples; NULL (with a message) if it is not one this reader handles. */
static float *read_wav(const char *path, size_t *n_samples, uint32_t *sample_rate) {
    FILE *f = fopen(path, "rb");
    if (!f) return perror(path), NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *file = size > 12 ? malloc((size_t)size) : NULL;
    size_t got = file ? fread(file, 1, (size_t)size, f) : 0;
    fclose(f);
    if (!file || got != (size_t)size || memcmp(file, "RIFF", 4) || memcmp(file + 8, "WAVE", 4)) {
        fprintf(stderr, "%s: not a RIFF/WAVE file\n", path);
        return free(file), NULL;
    }
    unsigned channels = 0, bits = 0, is_float = 0;
    const unsigned char *data = NULL;
    size_t data_len = 0;
    for (size_t at = 12; at + 8 <= got;) {
        size_t len = le32(file + at + 4), body = at + 8;
        if (len > got - body) len = got - body;
        if (!memcmp(file + at, "fmt ", 4) && len >= 16) {
            uint16_t format = le16(file + body);
            if (format == 0xFFFE && len >= 26) format = le16(file + body + 24); /* WAVE_FORMAT_EXTENSIBLE */
            channels = le16(file + body + 2);
            *sample_rate = le32(file + body + 4);
            bits = le16(file + body + 14);
            is_float = format == 3;
            if (!(format == 1 || format == 3) || (is_float && bits != 32) || !(bits == 16 || bits == 24 || bits == 32))
                channels = 0;
        } else if (!memcmp(file + at, "data", 4)) {
            data = file + body, data_len = len;
        }
        at = body + len + (len & 1);
    }
    if (!channels || !data) {
        fprintf(stderr, "%s: unsupported WAV (16/24/32-bit PCM or 32-bit float only)\n", path);
        return free(file), NULL;
    }
    size_t frame = channels * (bits / 8);
    *n_samples = data_len / frame;
    float *pcm = malloc(*n_samples * sizeof *pcm + 1);
    for (size_t i = 0; pcm && i < *n_samples; i++) {
        float sum = 0;
        for (unsigned c = 0; c < channels; c++) sum += sample_at(data + i * frame + c * (bits / 8), is_float, bits);
        pcm[i] = sum / (float)channels;
    }
    free(file);
    return pcm;
}

/* Writes mono float samples as a 32-bit IEEE-float WAV. */
static int write_wav(const char *path, const float *pcm, size_t n, uint32_t rate) {
    unsigned char h[44];
    uint32_t data_len = (uint32_t)(n * 4);
    memcpy(h, "RIFF", 4), memcpy(h + 8, "WAVEfmt ", 8), memcpy(h + 36, "data", 4);
    uint32_t fields32[][2] = {{4, 36 + data_len}, {16, 16}, {24, rate}, {28, rate * 4}, {40, data_len}};
    uint16_t fields16[][2] = {{20, 3}, {22, 1}, {32, 4}, {34, 32}};
    for (size_t i = 0; i < 5; i++)
        for (int b = 0; b < 4; b++) h[fields32[i][0] + b] = (unsigned char)(fields32[i][1] >> (8 * b));
    for (size_t i = 0; i < 4; i++)
        for (int b = 0; b < 2; b++) h[fields16[i][0] + b] = (unsigned char)(fields16[i][1] >> (8 * b));
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(h, 1, 44, f) == 44;
    for (size_t i = 0; ok && i < n; i++) {
        uint32_t u;
        unsigned char b[4];
        memcpy(&u, &pcm[i], 4);
        for (int k = 0; k < 4; k++) b[k] = (unsigned char)(u >> (8 * k));
        ok = fwrite(b, 1, 4, f) == 4;
    }
    if (f && fclose(f)) ok = 0;
    if (!ok) perror(path);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL IN.wav OUT.wav [N_Q]\n", argv[0]);
        return 2;
    }
    uint32_t in_rate = 0, n_q = argc == 5 ? (uint32_t)strtoul(argv[4], NULL, 10) : 0;
    size_t n_in, n_frames, n_out;
    float *input = read_wav(argv[2], &n_in, &in_rate);
    if (!input) return 1;

    codec_params params = codec_default_params();
    codec_model *m = codec_load(argv[1], &params);
    if (!m) {
        fprintf(stderr, "error: %s\n", codec_last_error());
        return free(input), 1;
    }
    uint32_t rate = codec_sample_rate(m);
    /* Ask for the sizes (NULL buffers), then run with buffers of that size. */
    codec_status st = codec_encode(m, input, n_in, in_rate, n_q, NULL, 0, &n_frames);
    uint32_t *codes = NULL;
    float *output = NULL;
    if (st == CODEC_ERR_BUFFER_TOO_SMALL) {
        n_q = n_q ? n_q : codec_max_n_q(m);
        codes = malloc(n_q * n_frames * sizeof *codes);
        st = codec_encode(m, input, n_in, in_rate, n_q, codes, n_q * n_frames, &n_frames);
    }
    if (st == CODEC_OK) st = codec_decode(m, codes, n_q, n_frames, NULL, 0, &n_out);
    if (st == CODEC_ERR_BUFFER_TOO_SMALL) {
        output = malloc(n_out * sizeof *output);
        st = codec_decode(m, codes, n_q, n_frames, output, n_out, &n_out);
    }
    int ok = st == CODEC_OK;
    if (ok) {
        /* As long as the input at the model's rate (the decoder gives whole frames). */
        size_t length = (size_t)(((unsigned long long)n_in * rate + in_rate / 2) / in_rate);
        if (n_out > length) n_out = length;
        ok = write_wav(argv[3], output, n_out, rate);
        if (ok)
            printf("%s: %s, %u codebooks x %zu frames, %zu samples at %u Hz -> %s\n", argv[2], codec_arch(m), n_q,
                   n_frames, n_out, rate, argv[3]);
    } else {
        fprintf(stderr, "error: %s\n", codec_last_error());
    }
    codec_free(m);
    free(output), free(codes), free(input);
    return ok ? 0 : 1;
}
