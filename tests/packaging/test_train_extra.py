"""The commands of the PyTorch side, run where torch cannot be imported: one line naming the `train` extra, exit 2,
no traceback; --help and --version still answer. (test_runtime_only_install.py does it in a venv without torch.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# command -> (module:function, arguments of a real run)
TRAIN_COMMANDS = {
    "vaegan-train": ("vaegan.train.cli:train_cli", ["classifier", "--epochs", "1"]),
    "vaegan-attack": ("vaegan.train.cli:attack_cli", ["--attack", "fgsm"]),
    "vaegan-eval": ("vaegan.train.cli:eval_cli", ["--quick"]),
    "vaegan-eval-adaptive": ("vaegan.adaptive.cli:adaptive_cli", ["--n", "2"]),
    "vaegan-export": ("vaegan.export.cli:main", ["--out", "never-written"]),
}

CHILD = r"""
import contextlib, importlib, io, json, sys
sys.modules["torch"] = None  # import torch fails; find_spec("torch") is None
out = {}
for prog, (target, args) in json.loads(sys.argv[1]).items():
    mod, fn = target.split(":")
    cmd = getattr(importlib.import_module(mod), fn)
    for name, argv in (("run", args), ("help", args[:1] + ["--help"] if prog == "vaegan-train" else ["--help"]),
                       ("version", ["--version"])):
        err, std = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            try:
                cmd(argv, prog_name=prog)
                code = 0
            except SystemExit as e:
                code = e.code
        out[f"{prog} {name}"] = [code, err.getvalue(), std.getvalue()]
print(json.dumps(out))
"""


def test_train_commands_without_torch_say_what_to_install(tmp_path):
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(TRAIN_COMMANDS)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout)
    for prog in TRAIN_COMMANDS:
        code, err, _ = res[f"{prog} run"]
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (prog, err)
        assert err.startswith(f"Error: {prog}") and "needs the 'train' extra (not installed: torch" in err
        assert "pip install 'vaegan[train]'" in err
        code, _, out = res[f"{prog} help"]
        assert code == 0 and "Usage:" in out, (prog, out)
        code, _, out = res[f"{prog} version"]
        assert code == 0 and "version" in out, (prog, out)
    assert not (tmp_path / "never-written").exists()


def test_the_check_reads_the_extra_from_the_metadata():
    from vaegan.extras import extra_requirements, missing_packages

    names = extra_requirements("train")
    if not names:
        pytest.skip("the installed vaegan's metadata predates the train extra (reinstall: pip install -e .)")
    assert {"torch", "torchvision", "torchattacks", "matplotlib", "onnxscript"} <= set(names)
    assert missing_packages("train") == []  # this environment is the full one
    assert extra_requirements("no-such-extra") == []
