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
        line = axes[0].plot(r["alphas"], loss, marker=".", label=label + suffix)[0]
        if r.get("unrelated"):
            import numpy as np

            u = r["unrelated"]
            mean = np.asarray(u["mean_loss"], dtype=float)
            std = np.asarray(u["std_loss"], dtype=float)
            axes[0].plot(
                r["alphas"],
                mean,
                color=line.get_color(),
                linestyle="--",
                label=f"{len(u['seeds'])} unrelated inits (mean ± 1 std)",
            )
            axes[0].fill_between(
                r["alphas"], mean - std, mean + std, color=line.get_color(), alpha=0.2
            )
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


def plot_grid(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Figure 8: loss curves of the three families, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = ("init-init", "init-optimum", "optimum-optimum")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=False)
    for ax, family in zip(axes, families, strict=True):
        for r in records:
            if r["family"] != family:
                continue
            loss = [float("nan") if v is None else v for v in r["loss"]]
            if family == "init-optimum":
                colour = "tab:red" if r.get("own_pair") else "tab:blue"
                ax.plot(r["alphas"], loss, color=colour, alpha=0.6, linewidth=1)
            else:
                ax.plot(r["alphas"], loss, alpha=0.6, linewidth=1)
        ax.set_title(family + (" (red: own pair)" if family == "init-optimum" else ""))
        ax.set_xlabel("α")
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)


def plot_plane(
    rows: Sequence[dict[str, Any]],
    coords: dict[str, tuple[float, float]],
    resolution: int,
    path: str | Path,
) -> None:
    """Figures 1/9: contours of the loss on the plane, the three points and the straight paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.array([r["x"] for r in rows]).reshape(resolution, resolution)
    y = np.array([r["y"] for r in rows]).reshape(resolution, resolution)
    z = np.array([r["loss"] for r in rows], dtype=float).reshape(resolution, resolution)
    fig, ax = plt.subplots(figsize=(6, 5))
    finite = z[np.isfinite(z)]
    levels = np.quantile(finite, np.linspace(0, 1, 25)) if finite.size else 10
    cs = ax.contourf(x, y, z, levels=np.unique(levels), cmap="viridis")
    fig.colorbar(cs, ax=ax, label="training loss")
    names = list(coords)
    for i, n1 in enumerate(names):
        for n2 in names[i + 1 :]:
            (x1, y1), (x2, y2) = coords[n1], coords[n2]
            ax.plot([x1, x2], [y1, y2], color="white", linewidth=1, linestyle="--")
    for name, (px, py) in coords.items():
        ax.plot(px, py, "o", color="red")
        ax.annotate(name, (px, py), color="white", xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("u₁")
    ax.set_ylabel("u₂")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
