"""Tokenize a dataset on a Ray cluster with Ray Data: the Parquet rows ``codec tokenize`` writes, from many machines.

    from codec_rs.ray import tokenize
    summary = tokenize("/data/audio", "/models/mimi.gguf", "/data/codes", n_q=8, concurrency=16)

Needs ``pip install ./python[ray]`` (Ray Data and pyarrow) on every node, and the model file and the audio on a path
every node can read (a shared filesystem). Each worker is an actor that loads the model once and encodes
``batch_size`` files per call (``Codec.encode_batch``); Ray schedules the actors, retries the ones whose node dies,
and writes the shards. Rows: ``path`` (as given, or relative to its directory or manifest), ``codes``
(list<list<uint16>>, (n_q, n_frames); uint32 above 65536 codebook entries), ``n_q``, ``n_frames``, ``duration_s``,
``orig_sample_rate``; the files carry ``codec.*`` key-value metadata, as the CLI's do. Files that fail are listed in
``OUT_DIR/errors.jsonl`` (path and reason) and the rest go on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

import codec_rs

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")

_PathLike = Union[str, "os.PathLike[str]"]


def list_files(inputs: Union[_PathLike, Sequence[_PathLike]]) -> list[tuple[str, str]]:
    """``(row path, file to read)`` for each input, as ``codec tokenize`` expands them: directories walked
    recursively (sorted; wav, flac, mp3, ogg), ``.txt`` manifests (one path a line) and ``.jsonl`` manifests (a
    ``"path"`` field) relative to their own directory, other files as given."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items: list[tuple[str, str]] = []
    for given in inputs:
        root = Path(given)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            items.extend((str(p.relative_to(root)), str(p)) for p in files)
        elif root.suffix.lower() in (".txt", ".jsonl"):
            for line in root.read_text().splitlines():
                line = line.strip()
                if not line:
                    continue
                name = json.loads(line)["path"] if root.suffix.lower() == ".jsonl" else line
                items.append((name, str(root.parent / name)))
        elif root.exists():
            items.append((str(given), str(root)))
        else:
            raise FileNotFoundError(str(given))
    return items


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _schema(pa: Any, wide: bool, metadata: dict[str, str]) -> Any:
    code = pa.uint32() if wide else pa.uint16()
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("codes", pa.list_(pa.list_(code)), nullable=False),
            pa.field("n_q", pa.int32(), nullable=False),
            pa.field("n_frames", pa.int32(), nullable=False),
            pa.field("duration_s", pa.float32(), nullable=False),
            pa.field("orig_sample_rate", pa.int32(), nullable=False),
        ],
        metadata=metadata,
    )


class _Tokenizer:
    """A Ray actor: loads the model once, then encodes batches of files into Arrow tables of rows (plus an
    ``error`` column, null for the files that worked)."""

    def __init__(self, model: str, n_q: Optional[int], threads: Optional[int], metadata: dict[str, str]):
        import pyarrow as pa

        self.pa = pa
        self.codec = codec_rs.Codec(model, threads=threads)
        self.n_q = n_q
        wide = self.codec.codebook_size > 1 << 16
        self.schema = _schema(pa, wide, metadata).append(pa.field("error", pa.string()))
        self.code_dtype = np.uint32 if wide else np.uint16

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        names, files = [str(p) for p in batch["path"]], [str(f) for f in batch["file"]]
        rows: list[Optional[dict[str, Any]]] = [None] * len(names)
        errors: list[Optional[str]] = [None] * len(names)
        by_rate: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, file in enumerate(files):
            try:
                samples, rate = codec_rs.read_audio(file)
                rows[i] = {"duration_s": len(samples) / rate, "orig_sample_rate": rate}
                by_rate.setdefault(rate, []).append((i, samples))
            except Exception as e:  # noqa: BLE001 - any reader failure is this file's row in errors.jsonl
                errors[i] = f"{file}: {e}".replace("\n", " ")
        for rate, clips in by_rate.items():
            try:
                codes = self.codec.encode_batch([c for _, c in clips], sample_rate=rate, n_q=self.n_q)
            except Exception:  # noqa: BLE001 - one bad clip fails the batched call: each alone then
                codes = []
                for i, clip in clips:
                    try:
                        codes.append(self.codec.encode(clip, sample_rate=rate, n_q=self.n_q))
                    except Exception as e:  # noqa: BLE001
                        codes.append(None)
                        errors[i] = f"{files[i]}: {e}".replace("\n", " ")
            for (i, _), c in zip(clips, codes):
                if c is None:
                    rows[i] = None
                else:
                    rows[i]["codes"] = c.astype(self.code_dtype)  # type: ignore[index]
        ok = [r is not None and "codes" in r for r in rows]
        pa = self.pa

        def column(f: Any, dtype: Any) -> Any:
            return pa.array([f(r) if good else None for r, good in zip(rows, ok)], type=dtype)

        return pa.Table.from_arrays(
            [
                pa.array(names, type=pa.string()),
                column(lambda r: [list(q) for q in r["codes"]], self.schema.field("codes").type),
                column(lambda r: r["codes"].shape[0], pa.int32()),
                column(lambda r: r["codes"].shape[1], pa.int32()),
                column(lambda r: r["duration_s"], pa.float32()),
                column(lambda r: r["orig_sample_rate"], pa.int32()),
                pa.array(errors, type=pa.string()),
            ],
            schema=self.schema.with_metadata({}),
        )


def tokenize(
    paths_or_dir: Union[_PathLike, Sequence[_PathLike]],
    model: _PathLike,
    out_dir: _PathLike,
    n_q: Optional[int] = None,
    batch_size: int = 8,
    concurrency: Optional[int] = None,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """Tokenizes every audio file of ``paths_or_dir`` (directories, files, manifests) with ``model`` (a ``.gguf``
    path every node can read) into Parquet files under ``out_dir`` on the running Ray cluster (``ray.init()``
    first, or Ray starts a local one). ``concurrency``: model actors (default: one per 2 CPUs of the cluster);
    ``threads``: compute threads per actor (default 2); ``batch_size``: files per model call. Returns
    ``{"files": …, "done": …, "failed": …, "hours": …}``; failed files are listed in ``out_dir/errors.jsonl``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    items = list_files(paths_or_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = str(model)
    threads = threads or 2
    probe = codec_rs.Codec(model, threads=1)
    n_q_used = n_q or probe.max_n_q
    metadata = {
        "codec.arch": probe.arch,
        "codec.sample_rate": str(probe.sample_rate),
        "codec.hop": str(probe.hop),
        "codec.model_sha256": _sha256(model),
        "codec.n_q": str(n_q_used),
        "codec.tool": f"codec-rs {codec_rs.__version__}",
    }
    wide = probe.codebook_size > 1 << 16
    del probe
    if not ray.is_initialized():
        ray.init()
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 2)) // threads)
    ds = ray.data.from_items([{"path": name, "file": file} for name, file in items])
    rows = ds.map_batches(
        _Tokenizer,
        fn_constructor_kwargs={"model": model, "n_q": n_q, "threads": threads, "metadata": metadata},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        num_cpus=threads,
    ).materialize()
    failed = rows.filter(lambda r: r["error"] is not None).select_columns(["path", "error"]).take_all()
    with open(out / "errors.jsonl", "w") as f:
        for r in failed:
            f.write(json.dumps({"path": r["path"], "error": r["error"]}) + "\n")
    good = rows.filter(lambda r: r["error"] is None).drop_columns(["error"])
    schema = _schema(pa, wide, metadata)

    # Each block becomes one shard, written by the worker holding it, with the CLI's schema and metadata.
    def write_block(table: Any) -> Any:
        if table.num_rows == 0:
            return pa.table({"written": pa.array([], pa.int64())})
        table = table.cast(schema)
        name = f"part-{hashlib.sha256(table.column('path')[0].as_py().encode()).hexdigest()[:16]}.parquet"
        tmp = out / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, out / name)
        return pa.table({"written": pa.array([table.num_rows], pa.int64())})

    written = good.map_batches(write_block, batch_format="pyarrow", batch_size=None).sum("written") or 0
    hours = (good.sum("duration_s") or 0.0) / 3600.0 if written else 0.0
    return {"files": len(items), "done": int(written), "failed": len(failed), "hours": float(hours)}
