"""Bad input is an exception of the documented kind, never a crash: FileNotFoundError for a missing path,
ValueError for a bad argument or bad codes, codec_rs.CodecError (a RuntimeError) for everything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import codec_rs
from conftest import FIXTURES, Model


def test_codec_error_is_a_runtime_error() -> None:
    assert issubclass(codec_rs.CodecError, RuntimeError)


@pytest.mark.parametrize("spec", ["missing.gguf", "no/such/dir/model.gguf", FIXTURES / "mimi" / "nothing-here"])
def test_missing_model_file(spec) -> None:
    with pytest.raises(FileNotFoundError) as e:
        codec_rs.Codec(spec)
    assert e.value.filename == str(spec)


def test_model_file_that_is_not_a_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(codec_rs.CodecError, match="junk.gguf"):
        codec_rs.Codec(junk)
    with pytest.raises(codec_rs.CodecError, match="cannot convert"):
        codec_rs.Codec(tmp_path)  # an empty directory is no checkpoint


def test_unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    with pytest.raises(codec_rs.CodecError):
        codec_rs.Codec("someone/some-model")


@pytest.mark.parametrize("kwargs, match", [({"device": "tpu"}, "tpu"), ({"threads": 0}, "threads"),
                                           ({"threads": -2}, "threads"), ({"threads": 10**6}, "threads")])
def test_bad_load_arguments(mimi: Model, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec_rs.Codec(mimi.gguf, **kwargs)


@pytest.mark.parametrize(
    "audio, kwargs, match",
    [
        (np.zeros(100, np.float32), {"n_q": 0}, "n_q"),
        (np.zeros(100, np.float32), {"n_q": 9}, "n_q"),
        (np.zeros(100, np.float32), {"n_q": -1}, "n_q"),
        (np.zeros(100, np.float32), {"sample_rate": 0}, "sample_rate"),
        (np.zeros(100, np.float32), {"sample_rate": -24000}, "sample_rate"),
        (np.zeros(100, np.float32), {"sample_rate": 10**9}, "sample_rate"),
        (np.zeros(100, np.complex64), {}, "complex64"),
        (np.zeros(100, np.int32), {}, "int32"),
        (np.zeros(100, bool), {}, "bool"),
        ("speech.wav", {}, "<U10"),
        (np.zeros((2, 2, 100), np.float32), {}, "shape"),
        (np.zeros((100, 2), np.float32), {}, "channels"),
        (np.zeros((0, 100), np.float32), {}, "no channels"),
        (np.zeros(0, np.float32), {}, "empty"),
        (np.array([0.0, np.nan], np.float32), {}, "finite"),
    ],
)
def test_bad_encode_arguments(mimi: Model, audio, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mimi.codec.encode(audio, **kwargs)


@pytest.mark.parametrize(
    "codes, match",
    [
        (np.array([[-1, 0]]), "code -1 at codebook 0, frame 0 is negative"),
        (np.array([[0, 64]]), "code 64 at codebook 0, frame 1 is out of range"),
        (np.array([[0], [2**40]], np.uint64), "code 1099511627776 at codebook 1, frame 0 is out of range"),
        (np.zeros((1, 4), np.float32), "integer"),
        (np.zeros(4, np.int64), "shape"),
        (np.zeros((2, 1, 4), np.int64), "shape"),
        (np.zeros((9, 4), np.int64), "9 codebooks"),
        (np.zeros((0, 4), np.int64), "0 codebooks"),
        (np.zeros((8, 0), np.int64), "zero frames"),
    ],
)
def test_bad_codes(mimi: Model, codes: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mimi.codec.decode(codes)


def test_batch_errors_name_the_item(mimi: Model) -> None:
    good = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match=r"audio\[1\]"):
        mimi.codec.encode_batch([good, np.zeros(100, np.int32)])
    with pytest.raises(ValueError, match=r"codes\[2\]"):
        mimi.codec.decode_batch([np.zeros((8, 2), int), np.zeros((8, 2), int), np.full((8, 2), 99)])


def test_stream_errors(mimi: Model) -> None:
    m = mimi.codec
    with pytest.raises(ValueError, match="n_q"):
        m.stream_encoder(n_q=0)
    enc = m.stream_encoder()
    with pytest.raises(ValueError, match="finite"):
        enc.push(np.array([np.inf], np.float32))
    enc.flush()
    with pytest.raises(ValueError, match="flushed"):
        enc.flush()
    dec = m.stream_decoder()
    with pytest.raises(ValueError, match="out of range"):
        dec.push(np.full((8, 1), 64))


def test_convert_errors(tmp_path: Path) -> None:
    src = FIXTURES / "mimi" / "hub"
    with pytest.raises(FileNotFoundError):
        codec_rs.convert(tmp_path / "missing", tmp_path / "out.gguf")
    with pytest.raises(ValueError, match="dtype"):
        codec_rs.convert(src, tmp_path / "out.gguf", dtype="f8")
    with pytest.raises(ValueError, match="architecture"):
        codec_rs.convert(src, tmp_path / "out.gguf", arch="encodec")
    junk = tmp_path / "weights.pth"
    junk.write_bytes(b"not a torch zip")
    with pytest.raises(codec_rs.CodecError, match="weights.pth"):
        codec_rs.convert(junk, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_load_audio_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        codec_rs.load_audio(tmp_path / "missing.wav", 24000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(codec_rs.CodecError, match="junk.wav"):
        codec_rs.load_audio(junk, 24000)
    with pytest.raises(ValueError, match="sample_rate"):
        codec_rs.load_audio(FIXTURES / "mimi" / "input.wav", 0)


def test_threads_are_set_once(mimi: Model) -> None:
    """The pool of compute threads is the process's: a model asking for another size than it has is warned."""
    with pytest.warns(RuntimeWarning, match=r"already started with \d+") as record:
        for threads in (1, 2):  # at least one differs from the pool's size
            codec_rs.Codec(mimi.gguf, threads=threads)
    assert all(r.filename == __file__ for r in record)
