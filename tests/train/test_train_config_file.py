"""`vaegan-train ... --config FILE`: a TOML file fills the training dataclass, options on the command line override
it, and the files in configs/ are the recipes of the shipped weights."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vaegan.train import trainer
from vaegan.train.cli import train_cli

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
FN = {"classifier": "train_classifier", "vaegan": "train_vaegan", "purifier": "train_purifier"}


def run_config(monkeypatch, command, *args):
    """Run `vaegan-train COMMAND ARGS` with the trainer replaced by a recorder; returns (result, cfg, threads)."""
    seen = {}
    monkeypatch.setattr(trainer, FN[command], lambda cfg, resume: seen.update(cfg=cfg, resume=resume))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    result = CliRunner().invoke(train_cli, [command, *args])
    return result, seen.get("cfg"), seen.get("threads"), seen.get("resume")


def test_config_file_fills_the_dataclass_and_the_command_line_overrides_it(monkeypatch, tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('out = "runs/x"\nepochs = 7\nlr-decay-epochs = 2\nthreads = 3\nresume = true\n'
                 '[model]\nwidth = 32\nlatent_dim = 16\n')
    result, cfg, threads, resume = run_config(monkeypatch, "vaegan", "--config", str(f), "--epochs", "9",
                                              "--width", "8")
    assert result.exit_code == 0, result.output
    assert (cfg.out, cfg.epochs, cfg.lr_decay_epochs) == ("runs/x", 9, 2)
    assert (cfg.model.width, cfg.model.latent_dim) == (8, 16)
    assert cfg.lr == 3e-4 and threads == 3 and resume is True  # untouched default; the command's own options


def test_config_file_errors_are_one_line(monkeypatch, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("epochs = 3\nwidht = 32\n")
    result, cfg, _, _ = run_config(monkeypatch, "vaegan", "--config", str(f))
    assert result.exit_code != 0 and cfg is None
    assert "unknown option 'widht'" in result.output and str(f) in result.output
    f.write_text('epochs = "many"\n')
    result, cfg, _, _ = run_config(monkeypatch, "purifier", "--config", str(f))
    assert result.exit_code != 0 and cfg is None
    assert "epochs = 'many'" in result.output and "Traceback" not in result.output
    f.write_text("epochs = [\n")
    result, cfg, _, _ = run_config(monkeypatch, "classifier", "--config", str(f))
    assert result.exit_code != 0 and cfg is None and f"config {f}" in result.output


@pytest.mark.parametrize("path", sorted(set(CONFIGS.glob("*.toml")) - {CONFIGS / "adaptive.toml"}),
                         ids=lambda p: p.name)
def test_every_config_runs_with_the_command_its_header_names(monkeypatch, path):
    m = re.search(rf"vaegan-train (\w+) --config configs/{re.escape(path.name)}", path.read_text())
    assert m, f"{path.name}: its header comment names no `vaegan-train COMMAND --config configs/{path.name}`"
    result, cfg, threads, _ = run_config(monkeypatch, m.group(1), "--config", str(path))
    assert result.exit_code == 0, result.output
    assert cfg.out.startswith("runs/") and threads


@pytest.mark.parametrize("config,weights", [("purifier_c50.toml", "models/vaegan.pt"),
                                            ("w48_c50.toml", "models/candidates/purifier_w48_c50.pt"),
                                            ("classifier.toml", "models/classifier.pt")])
def test_configs_reproduce_the_shipped_checkpoints_recorded_config(monkeypatch, config, weights):
    command = "classifier" if "classifier" in config else "purifier"
    result, cfg, _, _ = run_config(monkeypatch, command, "--config", str(CONFIGS / config))
    assert result.exit_code == 0, result.output
    recorded = torch.load(ROOT / weights, map_location="cpu", weights_only=True)["config"]
    ours = dataclasses.asdict(cfg)
    differ = {k for k in recorded if k in ours and ours[k] != recorded[k]}
    assert differ <= {"out", "init"}, {k: (ours[k], recorded[k]) for k in differ}


def test_vaegan_config_builds_the_shipped_architecture(monkeypatch):
    result, cfg, _, _ = run_config(monkeypatch, "vaegan", "--config", str(CONFIGS / "vaegan.toml"))
    assert result.exit_code == 0, result.output
    shipped = torch.load(ROOT / "models/vaegan.pt", map_location="cpu", weights_only=True)["model_args"]
    assert dataclasses.asdict(cfg.model) == shipped


def _suite():
    import importlib.util

    spec = importlib.util.spec_from_file_location("adaptive_suite", ROOT / "scripts/adaptive_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_adaptive_suite_uses_only_options_of_vaegan_eval_adaptive():
    from importlib.metadata import entry_points

    cli = next(e for e in entry_points(group="console_scripts") if e.name == "vaegan-eval-adaptive").load()
    known = {o for p in cli.params for o in p.opts}
    suite = _suite()
    runs = suite.expand(suite.tomllib.loads((CONFIGS / "adaptive.toml").read_text()), "artifacts")
    assert len({r["name"] for r in runs}) == len(runs) > 30
    used = {a for r in runs for a in r["common"] + r["args"] if a.startswith("--")}
    assert used <= known, used - known


def test_adaptive_suite_keeps_finished_runs_and_merges_them(tmp_path, capsys):
    done = tmp_path / "adaptive_fab_0.1"
    done.mkdir()
    (done / "adaptive.json").write_text("{}")
    rc = _suite().main(["--dry-run", "--reports", str(tmp_path), "--exe", "EVAL", "--extra", "--lam 30"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    starts, merge = lines[:-1], lines[-1]
    assert "+ EVAL --n 1000 --threads 1 --lam 30 --eps 0.1 --attacks bpda,full --attack-steps 50 --curve 10,20,50 " \
           f"--out {tmp_path}/adaptive_full_0.1" in starts
    assert not any("adaptive_fab_0.1" in s for s in starts)            # finished: not started again
    assert not any("square5k" in s or "--device" in s for s in starts)  # other tiers: not started
    assert f"--merge {done} " in merge and merge.endswith(f"--out {tmp_path}/adaptive")
