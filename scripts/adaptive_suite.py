"""Run the adaptive-attack suite of configs/adaptive.toml: each run is one `vaegan-eval-adaptive` command into
REPORTS/<name>/; a run whose adaptive.json exists is kept, a stopped one resumes from its partial/ folder. Then every
finished run of the suite is merged per image into REPORTS/adaptive/. `make adaptive` calls this.

    python scripts/adaptive_suite.py [--tier cpu|long|gpu|extra ...] [--jobs 2] [--extra "--checkpoint F --lam 30"]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def expand(suite: dict, artifacts: str, threads: int | None = None) -> list[dict]:
    """One entry per (run, eps): name, tier, merge, the common arguments and the run's own (lists); ``threads``
    replaces every CPU run's thread count."""
    d = suite.get("defaults", {})
    runs = []
    for r in suite["run"]:
        for eps in r.get("eps", [None]):
            args = shlex.split(r["args"].format(artifacts=artifacts))
            tier = r.get("tier", "cpu")
            common = ["--n", str(d.get("n", 1000))]
            common += d.get("gpu_args", []) if tier == "gpu" else ["--threads", str(threads or r.get("threads", d.get("threads", 1)))]
            runs.append({"name": r["name"].format(eps=eps), "tier": tier, "merge": r.get("merge", True),
                         "common": common, "args": ([] if eps is None else ["--eps", str(eps)]) + args})
    return runs


def command(exe: str, run: dict, extra: list[str], reports: Path) -> list[str]:
    return [exe, *run["common"], *extra, *run["args"], "--out", str(reports / run["name"])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default=str(ROOT / "configs/adaptive.toml"))
    ap.add_argument("--tier", action="append", choices=["cpu", "long", "gpu", "extra"],
                    help="tiers to start (repeatable; default cpu)")
    ap.add_argument("--only", action="append", help="start only the runs of these names")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--threads", type=int, default=None, help="threads of every CPU run (default: the suite's)")
    ap.add_argument("--extra", default="", help="options added to every run, e.g. '--checkpoint FILE --lam 30'")
    ap.add_argument("--artifacts", default="artifacts", help="the exported runtime that Square queries")
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--exe", default=None, help="vaegan-eval-adaptive (default: beside this Python, else PATH)")
    ap.add_argument("--no-merge", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = ap.parse_args(argv)
    try:
        with open(a.suite, "rb") as f:
            runs = expand(tomllib.load(f), a.artifacts, a.threads)
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        print(f"Error: suite {a.suite}: {e}", file=sys.stderr)
        return 2
    exe = a.exe or str(Path(sys.executable).with_name("vaegan-eval-adaptive"))
    if not a.dry_run and not Path(exe).exists():
        exe = shutil.which("vaegan-eval-adaptive") or exe
    reports, extra = Path(a.reports), shlex.split(a.extra)
    tiers = set(a.tier or ["cpu"])
    todo = [r for r in runs if (r["name"] in a.only if a.only else r["tier"] in tiers)
            and not (reports / r["name"] / "adaptive.json").exists()]

    def start(run: dict) -> int:
        cmd = command(exe, run, extra, reports)
        print("+", shlex.join(cmd), flush=True)
        if a.dry_run:
            return 0
        out = reports / run["name"]
        out.mkdir(parents=True, exist_ok=True)
        if (reports / "report.json").exists():  # the oblivious rows, shown beside the run's numbers
            shutil.copy(reports / "report.json", out / "report.json")
        rc = subprocess.call(cmd)
        if rc:
            print(f"Error: run {run['name']} exited {rc}; the others go on", file=sys.stderr)
        return rc

    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        failed = sum(rc != 0 for rc in pool.map(start, todo))
    finished = [r for r in runs if (reports / r["name"] / "adaptive.json").exists() or (a.dry_run and r in todo)]
    done = [reports / r["name"] for r in finished if r["merge"]]
    if not a.no_merge and done:
        cmd = [exe, *[x for d in done for x in ("--merge", str(d))], "--out", str(reports / "adaptive")]
        print("+", shlex.join(cmd), flush=True)
        if not a.dry_run and subprocess.call(cmd):
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
