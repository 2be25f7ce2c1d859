"""Matplotlib figures (imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mliscan.paths import atomic_path


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Loss (and accuracy) against alpha for one or more result records; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    has_acc = any(r.get("accuracy") for r in records)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4))
    axes = list(axes) if has_acc else [axes]
    for r in records:
        label = r.get("label", Path(r["final"]).name)
        mono = r.get("monotonic")
        suffix = (
            "" if mono is None else (" (monotonic)" if mono else f" (min-Δ {r['min_delta']:.3g})")
        )
        loss = [float("nan") if v is None else v for v in r["loss"]]
        axes[0].plot(r["alphas"], loss, marker=".", label=label + suffix)
        if has_acc and r.get("accuracy"):
            acc = [float("nan") if v is None else v for v in r["accuracy"]]
            axes[1].plot(r["alphas"], acc, marker=".", label=label)
    finite = [v for r in records for v in r["loss"] if v is not None and v > 0]
    if (
        finite
        and len(finite) == sum(len(r["loss"]) for r in records)
        and max(finite) > 100 * min(finite)
    ):
        axes[0].set_yscale("log")  # small rises near a converged end are visible on a log scale
    axes[0].set_xlabel("α")
    axes[0].set_ylabel("training loss")
    axes[0].set_title("Loss along θ(α) = θ₀ + α(θ_T − θ₀)")
    axes[0].legend(fontsize=8)
    if has_acc:
        axes[1].set_xlabel("α")
        axes[1].set_ylabel("accuracy")
        axes[1].set_title("Accuracy")
    fig.tight_layout()
    fmt = path.suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)
