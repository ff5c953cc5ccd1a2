"""OUT/adaptive.png: defended accuracy vs eps per attack, the worst case, and the oblivious numbers beside them."""

from __future__ import annotations

from pathlib import Path

from .registry import LABELS, RANDOMIZED


def plot_adaptive(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [str(e) for e in report["eps"]]
    c = report["clean"]
    obl = report.get("oblivious")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, per in report["attacks"].items():
        clean = c["defended_randomized"] if name in RANDOMIZED else c["defended"]
        pts = [(float(e), per[e]["accuracy"]) for e in eps if e in per]
        ax.plot([0.0] + [p[0] for p in pts], [clean] + [p[1] for p in pts], marker="o", label=LABELS[name])
    if report["any"]:
        pts = [(float(e), report["any"][e]) for e in eps if e in report["any"]]
        ax.plot([0.0] + [p[0] for p in pts], [c["defended"]] + [p[1] for p in pts], "k-", lw=2.5,
                label="worst case (adaptive)")
    if obl:
        for row, per in obl["rows"].items():
            pts = sorted((float(e), v) for e, v in per.items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", marker="x", alpha=0.6, label=row)
    ax.set_xlabel("eps (L-inf)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"defended accuracy, first {report['n']} test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
