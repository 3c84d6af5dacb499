"""A finished job's results for people: a per-round table and a plot (no kopf, no torch).

`flare-operator report --job NAME -n NAMESPACE` reads the job's status for its results location;
`--metrics FILE` reads a metrics.json directly.
"""

from __future__ import annotations

import json
from pathlib import Path


def round_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per round, the global model's holdout accuracy, each site's, epsilon spent."""
    sites = sorted({s for entry in metrics.get("history", []) for s in entry.get("sites", {})})
    header = ["round", "evaluated", "global acc", *(f"{s} acc" for s in sites), *(f"{s} eps" for s in sites)]
    rows = []
    entries = list(metrics.get("history", []))
    if metrics.get("final"):
        entries.append({**metrics["final"], "round": "final"})
    for entry in entries:
        site = entry.get("sites", {})
        rows.append([
            str(entry.get("round")), str(entry.get("evaluated", "")),
            f"{entry.get('global', {}).get('val_accuracy', float('nan')):.3f}",
            *(f"{site.get(s, {}).get('val_accuracy', float('nan')):.3f}" for s in sites),
            *(_eps(site.get(s, {}).get("dp_epsilon")) for s in sites),
        ])
    return header, rows


def _eps(value) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def plot_accuracy(metrics: dict, path: Path) -> Path:
    """PNG: holdout accuracy per round, the global model and each site (bias across sites shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = list(metrics.get("history", []))
    if metrics.get("final"):
        history.append({**metrics["final"], "round": len(history)})
    rounds = [e["round"] for e in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rounds, [e["global"]["val_accuracy"] for e in history], marker="o", linewidth=2, label="global")
    for site in sorted({s for e in history for s in e.get("sites", {})}):
        ax.plot(rounds, [e["sites"].get(site, {}).get("val_accuracy") for e in history], marker=".",
                linestyle="--", label=site)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (the global model each round starts from; last: the final model)")
    ax.set_ylabel("holdout accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{metrics.get('job', {}).get('name', 'job')}: accuracy per round and site")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_metrics(path: Path) -> dict:
    return json.loads(path.read_text())
