"""vaegan-export under faults (issue 30): the export is staged in a sibling folder and swapped in whole, so a failed
or killed export leaves the previous one intact; the manifest holds no machine paths."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from vaegan.train.errors import VaeganError


def _snapshot(d) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_failed_export_leaves_the_previous_export_intact(tiny_artifacts, tiny_vaegan_ckpt, tiny_classifier_ckpt,
                                                         tmp_path, monkeypatch):
    from vaegan.export import core, validate
    from vaegan.export.validate import ExportValidationError

    prev = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, prev)
    (prev / "encoder.onnx").write_bytes(b"the previous export's encoder")  # to see whether it is overwritten
    before = _snapshot(prev)
    calls = []

    def fail_second(spec, *a, **k):  # the first graph is written and checked, then validation fails
        calls.append(spec.name)
        if len(calls) == 2:
            raise ExportValidationError("purify: made to fail by the test")

    monkeypatch.setattr(validate, "check_numerics", fail_second)
    with pytest.raises(ExportValidationError, match="made to fail"):
        core.export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, prev, echo=lambda *_: None)
    assert len(calls) == 2
    assert _snapshot(prev) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]  # no staging folder left behind


def test_export_refuses_a_folder_it_would_wrongly_replace(tmp_path, tiny_vaegan_ckpt, tiny_classifier_ckpt):
    from vaegan.export import export_all

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(VaeganError, match=r"photos: not empty and not an artifacts folder \(no manifest.json\)"):
        export_all(tiny_vaegan_ckpt, tiny_classifier_ckpt, tmp_path / "photos", echo=lambda *_: None)
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def test_manifest_has_no_machine_paths_and_folder_mode_follows_umask(tiny_export):
    from vaegan.train.checkpoint import file_sha256

    out, m = tiny_export["out"], tiny_export["manifest"]
    assert m["checkpoint"] == {"file": tiny_export["vaegan"].name, "sha256": file_sha256(tiny_export["vaegan"])}
    assert m["classifier_checkpoint"] == {"file": tiny_export["classifier"].name,
                                          "sha256": file_sha256(tiny_export["classifier"])}
    text = (out / "manifest.json").read_text()
    for folder in (tiny_export["vaegan"].parent, out, os.getcwd(), os.path.expanduser("~")):
        assert f"{folder}/" not in text and json.dumps(str(folder)) not in text, folder
    for entry in list(m["graphs"].values()) + list(m["engines"].values()):
        assert "/" not in entry["file"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask  # the staging folder's 0700 is not kept
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
