"""vaegan-export's bad input: one line, non-zero exit, no traceback; --help / --version import no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from vaegan.export.cli import main


def _run(*args):
    res = CliRunner().invoke(main, list(args))
    assert "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res


def _error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, res.output
    return lines[0]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag):
    code = ("import sys; from vaegan.export.cli import main\n"
            f"try:\n    main(['{flag}'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


def test_missing_checkpoint(tmp_path, tiny_classifier_ckpt):
    res = _run("--checkpoint", str(tmp_path / "nope.pt"), "--classifier", str(tiny_classifier_ckpt),
               "--out", str(tmp_path / "a"))
    assert res.exit_code == 2
    assert "nope.pt: checkpoint not found" in _error_line(res)


def test_corrupt_checkpoint(tmp_path, tiny_classifier_ckpt):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip file at all")
    res = _run("--checkpoint", str(bad), "--classifier", str(tiny_classifier_ckpt), "--out", str(tmp_path / "a"))
    assert res.exit_code == 2
    assert "bad.pt: not a readable checkpoint" in _error_line(res)


def test_classifier_passed_as_vaegan(tmp_path, tiny_classifier_ckpt):
    res = _run("--checkpoint", str(tiny_classifier_ckpt), "--classifier", str(tiny_classifier_ckpt),
               "--out", str(tmp_path / "a"))
    assert res.exit_code == 2
    assert "is a classifier checkpoint, expected a vaegan checkpoint" in _error_line(res)


def test_vaegan_passed_as_classifier(tmp_path, tiny_vaegan_ckpt):
    res = _run("--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(tiny_vaegan_ckpt),
               "--out", str(tmp_path / "a"))
    assert res.exit_code == 2
    assert "is a vaegan checkpoint, expected a classifier checkpoint" in _error_line(res)


def test_unwritable_output_dir(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = _run("--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(tiny_classifier_ckpt),
               "--out", str(blocker / "out"))
    assert res.exit_code == 2
    assert "output folder is not writable" in _error_line(res)


@pytest.mark.parametrize("opset", ["12", "99"])
def test_opset_out_of_range(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt, opset):
    res = _run("--checkpoint", str(tiny_vaegan_ckpt), "--classifier", str(tiny_classifier_ckpt),
               "--out", str(tmp_path / "a"), "--opset", opset)
    assert res.exit_code == 2
    assert "Invalid value for '--opset'" in res.output and "18<=x<=22" in res.output


def test_library_rejects_bad_input_before_work(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt):
    from vaegan.export import export_all
    from vaegan.train.config import PurifyConfig
    from vaegan.train.errors import VaeganError

    with pytest.raises(VaeganError, match=r"opset 30 is out of range \(supported: 18\.\.22\)"):
        export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path / "a", opset=30)
    with pytest.raises(VaeganError, match=r"max-batch must be >= 1"):
        export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path / "a", max_batch=0)
    with pytest.raises(VaeganError,
                       match=r"purify.onnx and the runtime implement mode=latent, init=encoder only \(got mode=pixel"):
        export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path / "a", purify_cfg=PurifyConfig(mode="pixel"))
    with pytest.raises(VaeganError, match=r"checkpoint not found"):
        export_all(tmp_path / "missing.pt", tiny_classifier_ckpt, tmp_path / "a")


def test_fp16_needs_trt(tmp_path):
    res = _run("--fp16", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2
    assert "--fp16 applies to TensorRT engines" in res.output
