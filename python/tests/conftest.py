"""Shared fixtures: the committed reduced-config models (tests/fixtures), converted once per session, and their
reference inputs and outputs. Set CODEC_BIN to a built `codec` binary to also compare with the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import codec_rs

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


@dataclass(frozen=True)
class Model:
    """A fixture model: its architecture, its GGUF, the loaded codec and the directory of its reference files."""

    arch: str
    gguf: Path
    codec: codec_rs.Codec
    fixtures: Path

    def load(self, name: str) -> np.ndarray:
        return np.load(self.fixtures / name)


# arch -> (checkpoint, convert's keyword arguments, reference directory)
CHECKPOINTS = {
    "mimi": (FIXTURES / "mimi" / "hub", {}, FIXTURES / "mimi"),
    "dac": (FIXTURES / "dac" / "44khz" / "hub", {}, FIXTURES / "dac" / "44khz"),
    "wavtokenizer": (
        FIXTURES / "wavtokenizer" / "frame75" / "original" / "model.ckpt",
        {"config": FIXTURES / "wavtokenizer" / "frame75" / "original" / "config.yaml"},
        FIXTURES / "wavtokenizer" / "frame75",
    ),
}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Model]:
    out = tmp_path_factory.mktemp("models")
    models = {}
    for arch, (src, kwargs, fixtures) in CHECKPOINTS.items():
        gguf = out / f"{arch}.gguf"
        codec_rs.convert(src, gguf, **kwargs)
        models[arch] = Model(arch, gguf, codec_rs.Codec(gguf), fixtures)
    return models


@pytest.fixture(params=list(CHECKPOINTS))
def model(request: pytest.FixtureRequest, models: dict[str, Model]) -> Model:
    """Each fixture model in turn."""
    return models[request.param]


@pytest.fixture
def mimi(models: dict[str, Model]) -> Model:
    return models["mimi"]


@pytest.fixture
def codec_bin() -> Path:
    """The `codec` binary named by $CODEC_BIN; the test is skipped without it."""
    path = os.environ.get("CODEC_BIN")
    if not path:
        pytest.skip("CODEC_BIN is not set (the path of a built `codec` binary)")
    if not Path(path).is_file():
        pytest.fail(f"CODEC_BIN={path} is not a file")
    return Path(path)

