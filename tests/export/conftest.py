"""One export of the tiny random-init nets per session, through the CLI with --trt, shared by the tests here.

Without TensorRT / an NVIDIA GPU the command must still write and validate every ONNX file, then exit 2 with the
install hint; with them it exits 0 and also writes engines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def trt_missing() -> str:
    from vaegan.export.trt import missing_requirements

    return missing_requirements()


@pytest.fixture(scope="session")
def tiny_export(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path_factory):
    from click.testing import CliRunner

    from vaegan.export.cli import main

    out = tmp_path_factory.mktemp("artifacts")
    res = CliRunner().invoke(main, ["--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(tiny_classifier_ckpt),
                                    "--out", str(out), "--trt", "--threads", "1"])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else None
    return {"out": Path(out), "result": res, "manifest": manifest, "vaegan": tiny_vaegan_ckpt,
            "classifier": tiny_classifier_ckpt}
