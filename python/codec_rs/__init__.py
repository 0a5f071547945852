"""codec_rs: neural audio codecs (Mimi, DAC, WavTokenizer) in Rust -- audio -> discrete codes -> audio.

    import codec_rs
    m = codec_rs.Codec("kyutai/mimi")          # a .gguf file, a checkpoint, or a hub id
    codes = m.encode(audio, sample_rate=44100)  # int32 (n_q, frames)
    audio = m.decode(codes)                     # float32 (samples,) at m.sample_rate

Every call on a model releases the GIL while it computes, so threads sharing one model run in parallel.
"""

from ._codec_rs import (
    Codec,
    CodecError,
    StreamDecoder,
    StreamEncoder,
    __version__,
    convert,
    load_audio,
    read_audio,
)

__all__ = [
    "Codec",
    "CodecError",
    "StreamDecoder",
    "StreamEncoder",
    "__version__",
    "convert",
    "load_audio",
    "read_audio",
]
