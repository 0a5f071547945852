"""Types of the native module codec_rs._codec_rs (re-exported by codec_rs)."""

import os
from typing import Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]
# float32 / float64 / int16 samples, (samples,) or (channels, samples); lists are passed through numpy.asarray.
_Audio = npt.ArrayLike
# Any integer dtype, (n_q, frames) or (1, n_q, frames).
_Codes = npt.ArrayLike

class CodecError(RuntimeError):
    """A model file, checkpoint, audio file or model run failed (what and where are in the message)."""

class Codec:
    """A neural audio codec model: audio -> discrete codes -> audio.

    ``model`` is a ``.gguf`` file, a checkpoint ``codec convert`` reads (a hub-style directory, a ``.safetensors``,
    descript's ``.pth``, a WavTokenizer ``.ckpt``), or a Hugging Face hub id such as ``"kyutai/mimi"`` (downloaded
    and converted once, cached). ``device``: ``"cpu"``, ``"cuda"``, ``"metal"`` or ``"auto"``. ``threads``: the
    size of the process-wide pool of compute threads, which the first call that computes sets (default: the
    physical cores, or ``$RAYON_NUM_THREADS``); asking another size later is a ``RuntimeWarning``.

    One model may be used from several Python threads at once: every call releases the GIL while it computes.

    Raises FileNotFoundError for a missing path, ValueError for a bad argument, CodecError for a bad model file.
    """

    def __init__(self, model: _Path, device: str = "cpu", threads: Optional[int] = None) -> None: ...
    @property
    def arch(self) -> str:
        """The architecture: ``"mimi"``, ``"dac"`` or ``"wavtokenizer"``."""
    @property
    def sample_rate(self) -> int:
        """Audio samples per second the model works at."""
    @property
    def hop(self) -> int:
        """Audio samples per code frame."""
    @property
    def frame_rate(self) -> float:
        """Code frames per second (``sample_rate / hop``)."""
    @property
    def max_n_q(self) -> int:
        """The most codebooks (code rows per frame) the model has."""
    @property
    def codebook_size(self) -> int:
        """Entries per codebook: codes lie in ``range(codebook_size)``."""
    def encode(
        self, audio: _Audio, sample_rate: Optional[int] = None, n_q: Optional[int] = None
    ) -> npt.NDArray[np.int32]:
        """Encodes audio into codes.

        ``audio``: float32, float64 or int16 (scaled by 1/32768), shape (samples,) or (channels, samples) (averaged
        to mono). ``sample_rate``: the audio's rate, resampled to the model's when it differs (default: the
        model's). ``n_q``: codebooks to use (default: all). Returns int32 codes of shape (n_q, frames), frames =
        ceil(samples at the model rate / hop).
        """
    def decode(self, codes: _Codes) -> npt.NDArray[np.float32]:
        """Decodes codes into audio.

        ``codes``: any integer dtype, shape (n_q, frames) or (1, n_q, frames), every code in
        ``range(codebook_size)``. Returns float32 mono audio at the model's sample rate, about frames * hop samples.
        """
    def encode_batch(
        self, audio: Sequence[_Audio], sample_rate: Optional[int] = None, n_q: Optional[int] = None
    ) -> list[npt.NDArray[np.int32]]:
        """Encodes several clips in one call (as ``encode`` each, same ``sample_rate`` and ``n_q`` for all); returns
        a list of int32 (n_q, frames) arrays in order."""
    def decode_batch(self, codes: Sequence[_Codes]) -> list[npt.NDArray[np.float32]]:
        """Decodes several code arrays in one call (as ``decode`` each); returns a list of float32 arrays in
        order."""
    def stream_encoder(self, n_q: Optional[int] = None) -> StreamEncoder:
        """A streaming encoder with ``n_q`` codebooks (default: all): push audio at the model's sample rate in
        pieces of any size, get codes as frames complete."""
    def stream_decoder(self) -> StreamDecoder:
        """A streaming decoder: push codes in pieces of any number of frames, get audio as it becomes final. Raises
        ``CodecError`` for a model whose decoder cannot stream (WavTokenizer: its attention spans the whole
        clip)."""

class StreamEncoder:
    """Streaming encoder: mono audio at the model's sample rate in pieces of any size, codes out as frames
    complete. Concatenated along frames, the codes of all pushes and the flush equal ``Codec.encode`` of the whole
    input. Made by ``Codec.stream_encoder``."""

    @property
    def n_q(self) -> int:
        """Codebooks per frame."""
    def push(self, audio: _Audio) -> npt.NDArray[np.int32]:
        """Pushes audio (float32 / float64 / int16; (T,) or (C, T), averaged to mono) at the model's sample rate;
        returns the codes of the frames it completes, int32 (n_q, k), k possibly 0."""
    def flush(self) -> npt.NDArray[np.int32]:
        """Ends the input: the codes of the remaining frames (the last partial frame padded as ``Codec.encode``
        pads it). The stream then takes no more input until ``reset()``."""
    def reset(self) -> None:
        """Forgets everything pushed: the stream starts anew (also after ``flush()`` or an error)."""

class StreamDecoder:
    """Streaming decoder: codes in pieces of any number of frames, audio out as it becomes final. Concatenated, the
    audio of all pushes and the flush equals ``Codec.decode`` of all the codes (up to float rounding). Made by
    ``Codec.stream_decoder``."""

    def push(self, codes: _Codes) -> npt.NDArray[np.float32]:
        """Pushes codes, any integer dtype, (n_q, k) or (1, n_q, k) with the same n_q on every push; returns the
        float32 samples that are final (about k * hop, at the model's sample rate)."""
    def flush(self) -> npt.NDArray[np.float32]:
        """Ends the input: the remaining samples. The stream then takes no more input until ``reset()``."""
    def reset(self) -> None:
        """Forgets everything pushed: the stream starts anew (also after ``flush()`` or an error)."""

def convert(
    src: _Path, out: _Path, arch: Optional[str] = None, config: Optional[_Path] = None, dtype: str = "f32"
) -> None:
    """Converts a checkpoint into a GGUF model file, as ``codec convert``: ``src`` is a hub-style directory
    (config.json + *.safetensors), a ``.safetensors`` file, descript's DAC ``.pth`` or a WavTokenizer ``.ckpt``;
    ``arch`` (``"mimi"``, ``"dac"``, ``"wavtokenizer"``) is detected when omitted; ``config`` is a config file for
    sources without one beside them; ``dtype``: ``"f32"``, ``"f16"`` or ``"q8_0"`` weight storage. What a user
    should know about choices made on the way is issued as ``UserWarning``."""

def load_audio(path: _Path, sample_rate: int) -> npt.NDArray[np.float32]:
    """Reads an audio file (wav, flac, mp3, ogg; any rate and channel count) as float32 mono samples at
    ``sample_rate`` Hz, with the library's own reader, downmix and resampler (what ``codec encode`` reads)."""

def read_audio(path: _Path) -> tuple[npt.NDArray[np.float32], int]:
    """Reads an audio file as ``load_audio`` does but at its own rate: ``(samples, sample_rate)``, float32 mono
    samples and the file's rate in Hz (what a dataset's row records of the original)."""
