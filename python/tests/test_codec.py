"""codec_rs against the committed reference fixtures and the CLI: codes exactly equal, decoded audio cos >= 0.9999,
batches and streams equal to single offline calls, input conversions, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

import codec_rs
from conftest import Model

# arch -> (sample_rate, hop, max_n_q, codebook_size) of the fixture models (their summary.json).
PROPERTIES = {
    "mimi": (24000, 1920, 8, 64),
    "dac": (44100, 512, 4, 64),
    "wavtokenizer": (24000, 320, 1, 64),
}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_same_audio(got: np.ndarray, want: np.ndarray) -> None:
    """Audio equal up to float rounding (the library's criterion for streams: same length, cos >= 0.99999)."""
    assert got.dtype == np.float32 and got.shape == want.shape
    assert cosine(got, want) >= 0.99999


def pieces(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """`x` cut along its last axis into pieces of `sizes`, repeated until it is used up."""
    out, at, i = [], 0, 0
    while at < x.shape[-1]:
        out.append(x[..., at : at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
    return out


def test_properties(model: Model) -> None:
    m = model.codec
    sample_rate, hop, max_n_q, codebook_size = PROPERTIES[model.arch]
    assert (m.arch, m.sample_rate, m.hop, m.max_n_q, m.codebook_size) == (
        model.arch,
        sample_rate,
        hop,
        max_n_q,
        codebook_size,
    )
    assert m.frame_rate == sample_rate / hop
    assert repr(m) == (
        f"Codec(arch='{model.arch}', sample_rate={sample_rate}, hop={hop}, max_n_q={max_n_q}, "
        f"codebook_size={codebook_size})"
    )


def test_encode_matches_reference(model: Model) -> None:
    codes = model.codec.encode(model.load("input.npy"))
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, model.load("codes.npy"))
    # The same samples read from the WAV by the library's reader.
    wav = codec_rs.load_audio(model.fixtures / "input.wav", model.codec.sample_rate)
    np.testing.assert_array_equal(wav, model.load("input.npy"))


@pytest.mark.parametrize("arch, n_q, reference", [("mimi", 3, "codes_nq3.npy"), ("dac", 2, "codes_nq2.npy")])
def test_encode_fewer_codebooks_matches_reference(models: dict[str, Model], arch: str, n_q: int, reference: str):
    m = models[arch]
    np.testing.assert_array_equal(m.codec.encode(m.load("input.npy"), n_q=n_q), m.load(reference))


def test_encode_matches_cli(model: Model, codec_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "codes.npy"
    wav = model.fixtures / "input.wav"
    subprocess.run([codec_bin, "encode", "-m", model.gguf, wav, "-o", out, "--quiet"], check=True)
    np.testing.assert_array_equal(model.codec.encode(codec_rs.load_audio(wav, model.codec.sample_rate)), np.load(out))


def test_decode_matches_reference(model: Model) -> None:
    codes = model.load("codes.npy")  # int64, as the reference wrote it
    audio = model.codec.decode(codes)
    reference = model.load("decoded.npy")
    assert audio.dtype == np.float32
    assert audio.shape == reference.shape
    assert cosine(audio, reference) >= 0.9999
    # Any integer dtype, with or without the batch axis, gives the same audio.
    for other in (codes.astype(np.uint16), codes.astype(np.int32)[None], codes.astype(np.uint8).tolist()):
        np.testing.assert_array_equal(model.codec.decode(other), audio)


def test_audio_dtypes_and_layouts(mimi: Model) -> None:
    m = mimi.codec
    x = mimi.load("input.npy")
    codes = m.encode(x)
    np.testing.assert_array_equal(m.encode(x.astype(np.float64)), codes)
    np.testing.assert_array_equal(m.encode(x.tolist()), codes)
    # A strided view is read as its values.
    np.testing.assert_array_equal(m.encode(np.stack([x, -x], axis=1)[:, 0]), codes)
    # (channels, samples) is averaged: identical channels give the mono codes, a silent one halves the signal.
    np.testing.assert_array_equal(m.encode(np.stack([x, x])), codes)
    np.testing.assert_array_equal(m.encode(x[None]), codes)
    np.testing.assert_array_equal(m.encode(np.stack([x, np.zeros_like(x)])), m.encode(x * np.float32(0.5)))
    # int16 is scaled by 1/32768.
    pcm16 = np.round(np.clip(x, -1, 1 - 1 / 32768) * 32768).astype(np.int16)
    np.testing.assert_array_equal(m.encode(pcm16), m.encode(pcm16.astype(np.float32) / 32768))


def write_wav16(path: Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def test_resampling_matches_the_library_reader(mimi: Model, tmp_path: Path) -> None:
    """16-bit audio at 48 kHz: encode(..., sample_rate=48000) equals encoding what the library's file reader
    (int16 scaling, resampler) makes of the same samples in a WAV file."""
    t = np.arange(96000) / 48000
    pcm = np.round(8000 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 1.3 * t)).astype(np.int16)
    wav = tmp_path / "in48k.wav"
    write_wav16(wav, pcm, 48000)
    m = mimi.codec
    codes = m.encode(pcm, sample_rate=48000)
    assert codes.shape == (8, 25)
    np.testing.assert_array_equal(codes, m.encode(codec_rs.load_audio(wav, m.sample_rate)))


def test_resampling_matches_cli(mimi: Model, codec_bin: Path, tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    pcm = np.round(6000 * np.sin(2 * np.pi * 330 * t)).astype(np.int16)
    wav, out = tmp_path / "in44k.wav", tmp_path / "codes.npy"
    write_wav16(wav, pcm, 44100)
    subprocess.run([codec_bin, "encode", "-m", mimi.gguf, wav, "-o", out, "--quiet"], check=True)
    np.testing.assert_array_equal(mimi.codec.encode(pcm, sample_rate=44100), np.load(out))


def test_batch_equals_single(model: Model) -> None:
    m = model.codec
    x = model.load("input.npy")
    clips = [x, x[: len(x) // 3], -x[::-1].copy()]
    codes = m.encode_batch(clips)
    assert len(codes) == len(clips)
    for clip, got in zip(clips, codes):
        np.testing.assert_array_equal(got, m.encode(clip))
    n_q = m.max_n_q
    for got, clip in zip(m.encode_batch(clips, sample_rate=m.sample_rate * 2, n_q=n_q), clips):
        np.testing.assert_array_equal(got, m.encode(clip, sample_rate=m.sample_rate * 2, n_q=n_q))
    audio = m.decode_batch(codes)
    for c, got in zip(codes, audio):
        assert_same_audio(got, m.decode(c))
    assert m.encode_batch([]) == [] and m.decode_batch([]) == []


def test_stream_encoder_equals_offline(model: Model) -> None:
    m = model.codec
    x = model.load("input.npy")
    offline = m.encode(x)
    stream = m.stream_encoder()
    assert stream.n_q == m.max_n_q
    # Pieces of every kind: a sample, less than a frame, several frames and a bit, nothing.
    sizes = [1, m.hop - 1, 3 * m.hop + 7, 0, 5]
    for _ in range(2):  # the second time after reset()
        parts = [stream.push(p) for p in pieces(x, sizes)] + [stream.flush()]
        assert all(p.dtype == np.int32 and p.shape[0] == m.max_n_q for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), offline)
        with pytest.raises(ValueError, match="flushed"):
            stream.push(x[:10])
        stream.reset()
    few = m.stream_encoder(n_q=1)
    streamed = np.concatenate([few.push(x), few.flush()], axis=1)
    np.testing.assert_array_equal(streamed, m.encode(x, n_q=1))


def test_stream_decoder_equals_offline(model: Model) -> None:
    m = model.codec
    codes = model.load("codes.npy")
    if model.arch == "wavtokenizer":
        with pytest.raises(codec_rs.CodecError, match="cannot stream"):
            m.stream_decoder()
        return
    offline = m.decode(codes)
    stream = m.stream_decoder()
    for _ in range(2):  # the second time after reset()
        parts = [stream.push(p) for p in pieces(codes, [1, 3, 0, 2])] + [stream.flush()]
        assert_same_audio(np.concatenate(parts), offline)
        stream.reset()
    stream.push(codes[:1, :2])
    with pytest.raises(ValueError, match="codebooks"):
        stream.push(codes[:2, 2:4])


def test_threads_share_a_model(mimi: Model) -> None:
    """Two threads encoding with one model get the codes of one thread alone."""
    m = mimi.codec
    x = mimi.load("input.npy")
    clips = [np.tile(x, 4), np.tile(-x, 4)]
    want = [m.encode(c) for c in clips]
    got: list = [None, None]

    def encode(i: int) -> None:
        got[i] = m.encode(clips[i])

    threads = [threading.Thread(target=encode, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_encode_releases_the_gil(mimi: Model) -> None:
    """With Python's thread switching interval far longer than the run, the main thread can run Python while
    another thread encodes only if the encode released the GIL."""
    m = mimi.codec
    x = np.tile(mimi.load("input.npy"), 60)  # 120 s: an encode of a few hundred ms
    entered = threading.Event()
    main_ran: list[int] = []
    seen_by_worker: list[int] = []

    def worker() -> None:
        entered.set()
        m.encode(x)
        seen_by_worker.append(len(main_ran))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        entered.wait()
        main_ran.append(1)
        t.join()
    finally:
        sys.setswitchinterval(interval)
    assert seen_by_worker == [1], "the main thread did not run while the other thread encoded"


FAULTS = """
import resource, sys, numpy as np, codec_rs
m = codec_rs.Codec(sys.argv[1])
x = np.sin(np.arange(10 * m.sample_rate) * 0.05).astype(np.float32)
m.encode(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):  # each encode finds the buffers of the one before
    m.encode(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings")
def test_freed_model_buffers_stay_on_the_heap(models: dict[str, Model], tmp_path: Path) -> None:
    """A repeated encode reuses the heap pages of the last one instead of faulting fresh ones in (page faults
    counted, not time): what CODEC_RS_KEEP_FREED_MEMORY=0 turns off."""

    def faults(**env: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS, models["wavtokenizer"].gguf], cwd=tmp_path, check=True,
                             capture_output=True, text=True, env={**os.environ, **env})
        return int(run.stdout)

    kept, default = faults(), faults(CODEC_RS_KEEP_FREED_MEMORY="0")
    assert kept < 200 and default > 10 * max(kept, 20), (kept, default)
