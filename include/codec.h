/*
 * codec.h: the C API of codec-rs, neural audio codecs (Mimi, DAC, WavTokenizer): audio -> discrete codes -> audio.
 *
 * Link with libcodec (crates/codec-capi, `cargo build --release -p codec-capi`):
 *     cc app.c -Iinclude -Ltarget/release -lcodec                                           (shared)
 *     cc app.c -Iinclude target/release/libcodec.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc  (static)
 * or, installed with its codec.pc (README, C API): cc app.c $(pkg-config --cflags --libs codec)
 *
 * Conventions
 * - Status: functions that can fail return a codec_status (or NULL / 0 where they return a pointer or a number);
 *   codec_last_error() then says what failed, naming the argument or file. Every call but codec_version,
 *   codec_default_params, codec_last_error and codec_last_status resets this thread's error first.
 * - Pointers: every pointer argument is checked; NULL is CODEC_ERR_INVALID_ARG, except an output buffer with
 *   capacity 0 (the size query below) and the unused pair of codec_stream_flush. Non-NULL pointers must point to
 *   at least the stated number of values, and buffers must not overlap.
 * - Buffers: capacities count values (uint32_t codes, float samples), not bytes. When a capacity is too small the
 *   call returns CODEC_ERR_BUFFER_TOO_SMALL, sets *n_frames / *n_samples to what it needs, and writes nothing else
 *   (no partial output; a stream is left as it was). Passing NULL with capacity 0 is how to ask for the size.
 * - Codes: uint32_t, row-major (n_q, n_frames): codebook q of frame f is codes[q * n_frames + f].
 * - Audio: mono float samples, nominally in [-1, 1]. Decoded audio is at codec_sample_rate().
 * - Threads: a codec_model may be used from several threads at once (encode, decode, batches and making streams
 *   take it read-only); a codec_stream by one thread at a time (it may move between threads). The library runs
 *   its kernels on one process-wide pool of threads (see codec_params.n_threads).
 * - Output: the library writes nothing to stdout or stderr (no progress bars, no panic messages).
 */
#ifndef CODEC_H
#define CODEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What codec_version() returns for this header. */
#define CODEC_VERSION "0.1.0"

typedef enum {
    CODEC_OK = 0,
    CODEC_ERR_INVALID_ARG = 1,      /* a NULL pointer, a value out of range, codes outside the codebook, bad audio */
    CODEC_ERR_IO = 2,               /* a file could not be read (missing, unreadable) */
    CODEC_ERR_MODEL = 3,            /* a model file or checkpoint is invalid, cannot be converted or downloaded */
    CODEC_ERR_UNSUPPORTED = 4,      /* the model or build cannot do this (WavTokenizer's stream decoder, a device
                                       this build or machine lacks) */
    CODEC_ERR_BUFFER_TOO_SMALL = 5, /* an output buffer is too small; the needed count was set */
    CODEC_ERR_INTERNAL = 6          /* a failure inside the library (please report it with codec_last_error()) */
} codec_status;

typedef enum {
    CODEC_DEVICE_CPU = 0,
    CODEC_DEVICE_CUDA = 1,  /* builds with the `cuda` feature */
    CODEC_DEVICE_METAL = 2, /* builds with the `metal` feature */
    CODEC_DEVICE_AUTO = 3   /* CUDA or Metal when built in and present, else the CPU */
} codec_device;

typedef struct {
    /* Threads of the process's compute pools; 0: the defaults (RAYON_NUM_THREADS if set, else every logical CPU);
       at most 4 per logical CPU (more is clamped). The pools are built once per process, by the first codec_load
       with n_threads > 0 or else by the first encode or decode: a later load asking another count keeps them
       (and succeeds). Like the CLI's --threads, that first load sets RAYON_NUM_THREADS (and CANDLE_NUM_THREADS=1
       unless set) in the process's environment (candle's kernels size themselves from them): make it before
       starting threads that read the environment. Negative: CODEC_ERR_INVALID_ARG. */
    int32_t n_threads;
    codec_device device; /* where the model runs; CODEC_ERR_UNSUPPORTED if this build or machine lacks it */
} codec_params;

typedef struct codec_model codec_model;
typedef struct codec_stream codec_stream;

/* n_threads 0, CODEC_DEVICE_CPU. */
codec_params codec_default_params(void);

/* The library's version, "MAJOR.MINOR.PATCH" (CODEC_VERSION of the header it was built with). Static storage. */
const char *codec_version(void);

/* Loads a model: the path of a .gguf model file, of a checkpoint `codec convert` reads (a hub-style directory,
   a .safetensors, a DAC .pth, a WavTokenizer .ckpt with its YAML beside it; converted into a temporary GGUF that
   is removed once loaded), or a hub id such as "kyutai/mimi" (downloaded and converted once, cached
   under $HF_HOME/codec-rs). Returns NULL on failure: codec_last_status() and codec_last_error() say why
   (a missing file: CODEC_ERR_IO; an invalid one: CODEC_ERR_MODEL). Free with codec_free.
   The first call tells glibc to keep freed blocks on the heap (mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD,
   process-wide): a model pass frees and allocates tens of megabytes per layer, which otherwise come back as fresh
   pages every call (full-size Mimi, warm 10 s calls: decode 31 % faster with it). CODEC_RS_KEEP_FREED_MEMORY=0 in
   the environment leaves the allocator as it is. */
codec_model *codec_load(const char *model, const codec_params *params);

/* Frees a model (NULL is fine). Streams made from it stay usable: each holds its own reference. */
void codec_free(codec_model *model);

/* This thread's last error message, "" if the last call succeeded. Valid until this thread's next codec_ call. */
const char *codec_last_error(void);

/* This thread's last status, CODEC_OK if the last call succeeded: why codec_load or codec_stream_encoder /
   codec_stream_decoder returned NULL. */
codec_status codec_last_status(void);

/* What the model is. On a NULL model: "" or 0, with CODEC_ERR_INVALID_ARG as the last status. */
const char *codec_arch(const codec_model *m);    /* "mimi", "dac", "wavtokenizer"; valid while m is */
uint32_t codec_sample_rate(const codec_model *m); /* Hz, of the model's audio in and out */
uint32_t codec_hop(const codec_model *m);         /* samples per code frame at the model's rate */
uint32_t codec_max_n_q(const codec_model *m);     /* codebooks per frame, at most */
uint32_t codec_codebook_size(const codec_model *m); /* codes are below this */
/* Frames codec_encode gives for n_samples at the model's rate: ceil(n_samples / hop). */
size_t codec_n_frames(const codec_model *m, size_t n_samples);

/* Encodes mono audio: pcm holds n_samples at sample_rate (resampled to the model's rate when it differs; 1000 to
   768000 Hz). n_q: codebooks, 0 for all. Writes n_q x n_frames codes and sets *n_frames. codes_capacity must be
   at least n_q x codec_n_frames(m, samples at the model's rate); otherwise CODEC_ERR_BUFFER_TOO_SMALL with
   *n_frames set to the frames the call gives (query: codes NULL, capacity 0). Empty or non-finite audio:
   CODEC_ERR_INVALID_ARG. */
codec_status codec_encode(const codec_model *m, const float *pcm, size_t n_samples, uint32_t sample_rate,
                          uint32_t n_q, uint32_t *codes, size_t codes_capacity, size_t *n_frames);

/* Decodes n_q x n_frames codes (1 <= n_q <= codec_max_n_q, each below codec_codebook_size, else
   CODEC_ERR_INVALID_ARG) into audio at the model's rate and sets *n_samples: n_frames x hop samples, a few fewer
   for some models (DAC with odd strides). pcm_capacity must be at least n_frames x hop; otherwise
   CODEC_ERR_BUFFER_TOO_SMALL with *n_samples set to n_frames x hop. */
codec_status codec_decode(const codec_model *m, const uint32_t *codes, uint32_t n_q, size_t n_frames, float *pcm,
                          size_t pcm_capacity, size_t *n_samples);

/* codec_encode of `batch` clips at once (arrays of `batch` entries; one n_q and sample_rate for all; clips may
   differ in length): the codes equal codec_encode's of each. Every buffer is checked before any work: if one is
   too small, CODEC_ERR_BUFFER_TOO_SMALL with every n_frames[i] set, and nothing written. batch 0 does nothing. */
codec_status codec_encode_batch(const codec_model *m, size_t batch, const float *const *pcm, const size_t *n_samples,
                                uint32_t sample_rate, uint32_t n_q, uint32_t *const *codes,
                                const size_t *codes_capacity, size_t *n_frames);

/* codec_decode of `batch` code arrays at once (one n_q for all), as codec_encode_batch. */
codec_status codec_decode_batch(const codec_model *m, size_t batch, const uint32_t *const *codes, uint32_t n_q,
                                const size_t *n_frames, float *const *pcm, const size_t *pcm_capacity,
                                size_t *n_samples);

/* Streaming: audio at the model's rate in pieces of any size gives exactly the codes of one codec_encode of the
   whole; codes in pieces of any number of frames give the audio of one codec_decode (up to float rounding).
   A push returns what is final so far (possibly nothing); flush ends the stream and returns the rest; after a
   flush, pushes fail until codec_stream_reset. Each model's latency: the README's Streaming section.
   WavTokenizer's decoder cannot stream (codec_stream_decoder: NULL, CODEC_ERR_UNSUPPORTED).
   Buffers: a call checks its buffer against the most it can give before it pushes anything (an encoder push:
   floor((samples pushed so far + n_samples) / hop) - frames given so far, times n_q codes; a flush: the same
   with ceil; a decoder push: (frames pushed so far + n_frames) x hop - samples given so far). If the buffer is
   smaller, CODEC_ERR_BUFFER_TOO_SMALL with the count set, and the stream is unchanged: retry the same call with a
   larger buffer. Nothing is kept back: every call hands out all it produced. */

/* A streaming encoder with n_q codebooks (0: all); NULL on failure (codec_last_status). Free with
   codec_stream_free. */
codec_stream *codec_stream_encoder(const codec_model *m, uint32_t n_q);

/* A streaming decoder; NULL on failure (CODEC_ERR_UNSUPPORTED for WavTokenizer). */
codec_stream *codec_stream_decoder(const codec_model *m);

/* Pushes n_samples (0 or more) of mono audio at the model's rate; writes the frames they complete (*n_frames,
   maybe 0) as n_q x *n_frames codes. */
codec_status codec_stream_encode(codec_stream *s, const float *pcm, size_t n_samples, uint32_t *codes,
                                 size_t codes_capacity, size_t *n_frames);

/* Pushes n_q x n_frames codes (n_q as in the stream's first push); writes the samples that are final
   (*n_samples, maybe 0). */
codec_status codec_stream_decode(codec_stream *s, const uint32_t *codes, uint32_t n_q, size_t n_frames, float *pcm,
                                 size_t pcm_capacity, size_t *n_samples);

/* Ends the stream and writes the rest: an encoder the remaining frames (the last one zero-padded, as
   codec_encode pads it) into codes / *n_frames; a decoder the remaining samples into pcm / *n_samples. The
   unused pair may be NULL. */
codec_status codec_stream_flush(codec_stream *s, uint32_t *codes, size_t codes_capacity, size_t *n_frames,
                                float *pcm, size_t pcm_capacity, size_t *n_samples);

/* Starts the stream anew (after a flush, after an error, or to drop what was pushed). */
codec_status codec_stream_reset(codec_stream *s);

/* Frees a stream (NULL is fine). */
void codec_stream_free(codec_stream *s);

#ifdef __cplusplus
}
#endif

#endif /* CODEC_H */
