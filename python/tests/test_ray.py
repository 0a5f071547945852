"""codec_rs.ray on a local Ray instance (2 CPUs): the rows it writes equal the CLI's `codec tokenize` rows on the
same small dataset (nested directories, several rates, a corrupt file), with the same schema and metadata, and the
corrupt file in errors.jsonl. Skipped where Ray Data is not installed (`pip install ./python[ray]`)."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from codec_rs.ray import tokenize  # noqa: E402


def write_wav(path: Path, rate: int, seconds: float, freq: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.4 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def rows(out: Path) -> tuple[dict[str, dict], list[dict]]:
    by_path, metadata = {}, []
    for shard in sorted(out.glob("*.parquet")):
        table = pq.read_table(shard)
        for meta in (pq.read_metadata(shard).metadata, table.schema.metadata):  # the file's, and the Arrow schema's
            metadata.append({k.decode(): v.decode() for k, v in (meta or {}).items() if k.startswith(b"codec.")})
        for row in table.to_pylist():
            assert row["path"] not in by_path, f"{row['path']} twice"
            by_path[row["path"]] = row
    return by_path, metadata


def test_ray_rows_equal_the_cli(tmp_path: Path, mimi, codec_bin: Path) -> None:
    data = tmp_path / "audio"
    for i, rate in enumerate([24000, 16000, 44100, 22050, 48000, 24000]):
        write_wav(data / ["", "a", "a/b"][i % 3] / f"clip{i}.wav", rate, 0.3 + 0.1 * i, 150.0 * (i + 1))
    (data / "a" / "bad.wav").write_bytes(b"RIFF not audio")
    cli_out = tmp_path / "cli"
    done = subprocess.run(
        [str(codec_bin), "tokenize", "-q", "-m", str(mimi.gguf), str(data), "-o", str(cli_out)], capture_output=True
    )
    assert done.returncode == 1, done.stderr  # the corrupt file

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = tokenize(data, mimi.gguf, tmp_path / "ray", batch_size=4, concurrency=1)
    finally:
        ray.shutdown()
    assert summary["files"] == 7 and summary["done"] == 6 and summary["failed"] == 1
    got, got_meta = rows(tmp_path / "ray")
    want, want_meta = rows(cli_out)
    assert sorted(got) == sorted(want) and len(got) == 6
    for path, row in want.items():
        assert got[path] == row, path
    assert got_meta and all(m == want_meta[0] for m in got_meta + want_meta), (got_meta, want_meta)
    assert pq.read_schema(next((tmp_path / "ray").glob("*.parquet"))).remove_metadata() == pq.read_schema(
        next(cli_out.glob("*.parquet"))
    ).remove_metadata()
    errors = [json.loads(line) for line in (tmp_path / "ray" / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == ["a/bad.wav"]
