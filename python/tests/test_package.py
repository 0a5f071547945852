"""The package around the native module: version, stubs that match it, convert's output."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import codec_rs
from conftest import FIXTURES, ROOT, Model

STUBS = Path(codec_rs.__file__).with_name("_codec_rs.pyi")


def test_version_is_the_workspace_version() -> None:
    workspace = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'\[workspace\.package\][^\[]*?\bversion\s*=\s*"([^"]+)"', workspace)
    assert version is not None
    assert codec_rs.__version__ == version.group(1)


def squeeze(doc: str | None) -> str:
    return " ".join((doc or "").split())


def test_stubs_match_the_module() -> None:
    """Every public name of the native module has a stub with the runtime's docstring, and nothing more."""
    assert (STUBS.parent / "py.typed").is_file()
    tree = ast.parse(STUBS.read_text())
    stubbed = {node.name: node for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    native = codec_rs._codec_rs
    public = {name for name in dir(native) if not name.startswith("_")}
    assert set(stubbed) == public
    assert set(codec_rs.__all__) == public | {"__version__"}
    for name, node in stubbed.items():
        obj = getattr(native, name)
        assert squeeze(ast.get_docstring(node)) == squeeze(obj.__doc__), name
        if isinstance(node, ast.ClassDef) and name != "CodecError":
            members = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"}
            runtime = {m for m in vars(obj) if not m.startswith("_")}
            assert set(members) == runtime, name
            for member, stub in members.items():
                assert squeeze(ast.get_docstring(stub)) == squeeze(getattr(obj, member).__doc__), f"{name}.{member}"


def test_convert_dtypes(tmp_path: Path) -> None:
    src = FIXTURES / "mimi" / "hub"
    sizes = {}
    for dtype in ("f32", "f16", "q8_0"):
        out = tmp_path / f"mimi-{dtype}.gguf"
        codec_rs.convert(src, out, dtype=dtype)
        sizes[dtype] = out.stat().st_size
        codes = codec_rs.Codec(out).encode(np.load(FIXTURES / "mimi" / "input.npy"))
        assert codes.shape == (8, 25)
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_checkpoints_load_directly() -> None:
    """A checkpoint (descript's DAC .pth) loads without an explicit convert."""
    m = codec_rs.Codec(FIXTURES / "dac" / "44khz" / "original" / "weights.pth")
    np.testing.assert_array_equal(
        m.encode(np.load(FIXTURES / "dac" / "44khz" / "input.npy")), np.load(FIXTURES / "dac" / "44khz" / "codes.npy")
    )


def test_bench_runs_with_codec_rs_alone(model: Model) -> None:
    """bench.py needs nothing but codec_rs: references missing here are skipped with a reason (timings unchecked)."""
    run = subprocess.run(
        [sys.executable, ROOT / "python" / "bench.py", model.gguf, "--seconds", "0.5", "--runs", "1"],
        check=True,
        capture_output=True,
        text=True,
    )
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"codec_rs {codec_rs.__version__}: Codec(arch='{model.arch}'")
    assert re.fullmatch(r"codec_rs +encode +[\d.]+ s +decode +[\d.]+ s", lines[2])
    for line in lines[3:]:
        assert re.match(r"\S.* (skipped: .+|encode +[\d.]+ s \( *[\d.]+x\) +decode .*)$|^\(", line), line


def locked_versions(lock: Path) -> dict[str, set[str]]:
    versions: dict[str, set[str]] = {}
    for name, version in re.findall(r'name = "([^"]+)"\nversion = "([^"]+)"', lock.read_text()):
        versions.setdefault(name, set()).add(version)
    return versions


def test_lock_files_agree() -> None:
    """python/ (its own workspace) locks only the root's versions of every crate both use: the wheel is built from what
    the Rust tests test, and a shared CARGO_TARGET_DIR reuses the root's builds."""
    root, python = locked_versions(ROOT / "Cargo.lock"), locked_versions(ROOT / "python" / "Cargo.lock")
    assert len(root.keys() & python.keys()) > 100
    # Every version python/ locks is one the root locks (the root may hold more: the CLI's own dependencies).
    differ = {name: (root[name], python[name]) for name in root.keys() & python.keys() if not python[name] <= root[name]}
    refresh = "cp Cargo.lock python/, then cargo update --workspace in python/"
    assert not differ, f"python/Cargo.lock differs from Cargo.lock ({refresh}): {differ}"
