"""One distribution: modules import as vaegan.train / vaegan.export / vaegan.runtime from top-level folders, and no
bare top-level `train`/`runtime`/`export` package ends up in site-packages."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_layout_and_imports(tmp_path):
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel, = tmp_path.glob("vaegan-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"vaegan", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for must in ("vaegan/__init__.py", "vaegan/train/purifier.py", "vaegan/export/__init__.py",
                 "vaegan/runtime/__init__.py", "vaegan/models/__init__.py"):
        assert must in names
    # every package folder of the source tree (e.g. a new runtime backend) is in the wheel, not only the top ones
    for top in ("train", "adaptive", "export", "runtime", "models", "serve"):
        for init in (ROOT / top).rglob("__init__.py"):
            assert f"vaegan/{init.relative_to(ROOT).as_posix()}" in names, f"{init.relative_to(ROOT)} missing from the wheel"
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for cli in ("vaegan-train", "vaegan-attack", "vaegan-eval", "vaegan-eval-adaptive", "vaegan-export", "vaegan-run",
                "vaegan-serve"):
        assert cli in entry
    # import from the unpacked wheel (ahead of the editable install on sys.path)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import vaegan.train.config, vaegan.runtime, vaegan.export, vaegan.train; "
            "print(vaegan.train.__file__); import importlib.util as u; print(u.find_spec('train'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0].startswith(str(site)) and lines[1] == "None"


def test_editable_install_maps_folders():
    import vaegan.runtime
    import vaegan.train

    assert Path(vaegan.train.__file__).parent == ROOT / "train"
    assert Path(vaegan.runtime.__file__).parent == ROOT / "runtime"
