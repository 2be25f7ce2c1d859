"""Matplotlib figures (imported only when a plot is asked for)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mliscan.metrics import converged, is_monotonic
from mliscan.paths import atomic_path
from mliscan.record import PathRecord, as_record

# A path's record, or (from callers that still hold them) its --json or stored dict.
Records = Sequence[PathRecord | Mapping[str, Any]]


def _delta(row: dict[str, Any]) -> float:
    """A row's min-Δ, NaN when undefined (then neither monotonic nor not)."""
    return float("nan") if row.get("min_delta") is None else float(row["min_delta"])


def plot_curves(records: Records, path: str | Path) -> None:
    """Loss (and accuracy) against alpha for one or more paths' records; written atomically."""
    save_figure_to(curves_figure(records), path)


def save_figure_to(fig: Any, path: str | Path) -> None:
    """Write a figure atomically in the format of the file name's suffix, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    plt.close(fig)


def curves_figure(records: Records) -> Any:
    """The figure of ``plot_curves`` (returned, not written)."""
    import matplotlib

    shown = [as_record(r) for r in records]

    if not _interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_acc = any(r.accuracy for r in shown)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4))
    axes = list(axes) if has_acc else [axes]
    for r in shown:
        label = r.label if r.label is not None else Path(str(r.final)).name
        mono = r.monotonic
        suffix = "" if mono is None else (" (monotonic)" if mono else f" (min-Δ {r.min_delta:.3g})")
        loss = [float("nan") if v is None else v for v in r.loss]
        line = axes[0].plot(r.alphas, loss, marker=".", label=label + suffix)[0]
        if r.unrelated:
            import numpy as np

            u = r.unrelated
            mean = np.asarray(u["mean_loss"], dtype=float)
            std = np.asarray(u["std_loss"], dtype=float)
            axes[0].plot(
                r.alphas,
                mean,
                color=line.get_color(),
                linestyle="--",
                label=f"{len(u['seeds'])} unrelated inits (mean ± 1 std)",
            )
            axes[0].fill_between(
                r.alphas, mean - std, mean + std, color=line.get_color(), alpha=0.2
            )
        if has_acc and r.accuracy:
            acc = [float("nan") if v is None else v for v in r.accuracy]
            axes[1].plot(r.alphas, acc, marker=".", label=label)
    finite = [v for r in shown for v in r.loss if v is not None and v > 0]
    if (
        finite
        and len(finite) == sum(len(r.loss) for r in shown)
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
    return fig


def _interactive() -> bool:
    """Inside a notebook or an interactive interpreter a returned figure should display."""
    import sys

    return "ipykernel" in sys.modules or hasattr(sys, "ps1")


def plot_grid(records: Records, path: str | Path) -> None:
    """Figure 8: loss curves of the three families, one panel each (the grid store's
    records)."""
    import matplotlib

    shown = [as_record(r) for r in records]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = ("init-init", "init-optimum", "optimum-optimum")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=False)
    for ax, family in zip(axes, families, strict=True):
        for r in shown:
            if r.family != family:
                continue
            loss = [float("nan") if v is None else v for v in r.loss]
            if family == "init-optimum":
                colour = "tab:red" if r.own_pair else "tab:blue"
                ax.plot(r.alphas, loss, color=colour, alpha=0.6, linewidth=1)
            else:
                ax.plot(r.alphas, loss, alpha=0.6, linewidth=1)
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
    levels = np.unique(np.quantile(finite, np.linspace(0, 1, 25))) if finite.size else finite
    if levels.size >= 2:
        cs = ax.contourf(x, y, z, levels=levels, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="training loss")
    else:  # the loss is undefined (NaN/Inf) or constant over the whole range: no contours
        ax.set_xlim(float(x.min()), float(x.max()))
        ax.set_ylim(float(y.min()), float(y.max()))
        ax.text(0.5, 0.5, "no loss contours on this range", transform=ax.transAxes, ha="center")
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


# ---- report figures (Figures 2/4, 5, 7) and logit trajectories (Figure 3) -------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _no_ticks() -> Any:
    from matplotlib.ticker import NullLocator as _NullLocator

    return _NullLocator()


def _log_axis(axis: Any, values: Sequence[float]) -> None:
    """Cheap, readable log ticks: decades only over wide ranges, 1-2-5 labels over narrow
    ones (matplotlib's labelled minor ticks cost about a second per figure)."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator

    pos = [v for v in values if v and v > 0 and math.isfinite(v)]
    narrow = bool(pos) and math.log10(max(pos) / min(pos)) < 2
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(_no_ticks())


def save_figure(fig: Any, base: Path) -> list[Path]:
    """Write ``base``.png and ``base``.svg atomically; returns both paths."""
    plt = _pyplot()
    written = []
    for fmt in ("png", "svg"):
        path = base.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=110)
        written.append(path)
    plt.close(fig)
    return written


def _label(key: tuple, names: Sequence[str]) -> str:
    return ", ".join(f"{n}={v}" for n, v in zip(names, key, strict=True))


def _kind(row: dict[str, Any], tol: float, loss_threshold: float | None) -> str:
    """How a run is drawn, as the tables count it: 'monotonic', 'non-monotonic', or 'not
    converged' (its final training loss is not below the threshold: the tables leave it
    out) and 'undefined' (no min-Δ)."""
    if loss_threshold is not None and not converged(row.get("final_train_loss"), loss_threshold):
        return "not converged"
    mono = is_monotonic(_delta(row), tol)
    return "undefined" if mono is None else "monotonic" if mono else "non-monotonic"


# colour of each kind of run (not converged: grey, behind the others)
_COLOURS = {
    "not converged": "0.7",
    "undefined": "0.7",
    "monotonic": "tab:blue",
    "non-monotonic": "tab:red",
}


def plot_curve_panels(
    rows: Sequence[dict[str, Any]],
    group_by: Sequence[str],
    tol: float,
    base: Path,
    loss_threshold: float | None = None,
) -> list[Path]:
    """Figures 2/4: every run's loss curve, one panel per group; non-monotonic runs in red,
    and with ``loss_threshold`` the runs the tables leave out (not converged) in grey."""
    import math

    plt = _pyplot()
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("loss"):
            groups.setdefault(tuple(r.get(k) for k in group_by), []).append(r)
    keys = sorted(groups, key=lambda t: tuple(str(v) for v in t)) or [()]
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows), squeeze=False)
    from matplotlib.collections import LineCollection

    for ax, key in zip(axes.flat, keys, strict=False):
        # one collection per colour: hundreds of curves draw as a few artists, not hundreds
        for kind, colour in _COLOURS.items():
            segments = [
                list(
                    zip(r["alphas"], [math.nan if v is None else v for v in r["loss"]], strict=True)
                )
                for r in groups.get(key, [])
                if _kind(r, tol, loss_threshold) == kind
            ]
            if segments:
                ax.add_collection(LineCollection(segments, colors=colour, alpha=0.7, linewidths=1))
        ax.autoscale_view()
        ax.set_title(_label(key, group_by) if key else "all runs", fontsize=8)
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(_no_ticks())  # minor log ticks cost seconds per figure
        ax.set_xlabel("α")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("training loss (log)")
    grey = "" if loss_threshold is None else f"; grey: not converged, loss ≥ {loss_threshold:g}"
    fig.suptitle(f"Interpolation curves (red: non-monotonic, min-Δ > {tol:g}{grey})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, base)


def plot_delta_scatter(
    rows: Sequence[dict[str, Any]], tol: float, base: Path, loss_threshold: float | None = None
) -> list[Path]:
    """Figure 5: min-Δ against normalized distance and against Gauss length (with
    ``loss_threshold``, the runs the tables leave out in grey, as not converged)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "normalized_distance", "‖θ_T − θ₀‖ / ‖θ₀‖"),
        (axes[1], "gauss_length", "average Gauss length"),
    ):
        for name, colour in _COLOURS.items():
            pts = [
                (r[key], r["min_delta"])
                for r in rows
                if r.get(key) is not None
                and r.get("min_delta") is not None
                and _kind(r, tol, loss_threshold) == name
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=14, color=colour, alpha=0.75, label=f"{name} ({len(pts)})")
        ax.set_xscale("log")
        _log_axis(ax.xaxis, [r[key] for r in rows if r.get(key) is not None])
        ax.set_xlabel(label)
        ax.set_ylabel("min-Δ")
        ax.legend(fontsize=8)
    fig.suptitle("min-Δ against distance travelled and Gauss length (Figure 5)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, base)


def plot_power_law(rows: Sequence[dict[str, Any]], fit: dict[str, float], base: Path) -> list[Path]:
    """Figure 7: log Gauss length against log normalized distance, with the least-squares fit."""
    import numpy as np

    plt = _pyplot()
    pts = [
        (r["normalized_distance"], r["gauss_length"])
        for r in rows
        if (r.get("normalized_distance") or 0) > 0 and (r.get("gauss_length") or 0) > 0
    ]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if pts:
        xs, ys = (np.asarray(v, dtype=float) for v in zip(*pts, strict=True))
        ax.scatter(xs, ys, s=14, color="tab:blue", alpha=0.75, label=f"runs ({len(pts)})")
        if np.isfinite(fit.get("slope", np.nan)):
            grid = np.geomspace(xs.min(), xs.max(), 50)
            ax.plot(grid, fit["prefactor"] * grid ** fit["slope"], color="black", linewidth=1)
            ax.text(
                0.03,
                0.95,
                f"Gauss length ≈ {fit['prefactor']:.3g} · d^{fit['slope']:.3f}\nR² = {fit['r2']:.3f}",
                transform=ax.transAxes,
                va="top",
                fontsize=9,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axis(ax.xaxis, [p[0] for p in pts])
    _log_axis(ax.yaxis, [p[1] for p in pts])
    ax.set_xlabel("normalized distance ‖θ_T − θ₀‖ / ‖θ₀‖")
    ax.set_ylabel("average Gauss length")
    ax.set_title("Figure 7: power law", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, base)


def plot_logit_pca(
    points: Any,
    labels: Sequence[int],
    alphas: Sequence[float],
    explained: Sequence[float],
    base: Path,
) -> list[Path]:
    """Figure 3: 2D PCA of each example's logit trajectory, coloured by class; α = 0 marked
    with a circle, α = 1 with a star."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10")
    seen: set[int] = set()
    for j, label in enumerate(labels):
        colour = cmap(int(label) % 10)
        xy = np.asarray(points[:, j, :])
        ax.plot(
            xy[:, 0],
            xy[:, 1],
            color=colour,
            linewidth=1.2,
            label=f"class {label}" if label not in seen else None,
        )
        seen.add(int(label))
        ax.scatter(xy[0, 0], xy[0, 1], color=colour, marker="o", s=25)
        ax.scatter(xy[-1, 0], xy[-1, 1], color=colour, marker="*", s=70)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.set_title(f"Logits along the path, {len(alphas)} alphas (o: α=0, *: α=1)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, base)


def plot_trajectory(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """MLI along training: min-Δ, barrier, normalized distance and Gauss length of the paths
    from θ₀ to each checkpoint and from each checkpoint to θ_T, against the step."""
    plt = _pyplot()
    numbered = all(r["step"] is not None for r in rows)
    x = [r["step"] if numbered else i for i, r in enumerate(rows)]
    panels = (
        ("min_delta", "min-Δ (largest rise)"),
        ("barrier", "loss barrier"),
        ("normalized_distance", "‖θ_b − θ_a‖ / ‖θ_a‖"),
        ("gauss_length", "average Gauss length"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for direction, label, style in (
            ("from_init", "θ₀ → θ_k", "o-"),
            ("to_final", "θ_k → θ_T", "s--"),
        ):
            ys = [r[f"{key}_{direction}"] for r in rows]
            ys = [float("nan") if v is None else float(v) for v in ys]
            ax.plot(x, ys, style, label=label, markersize=3)
        ax.set_title(title)
    for ax in axes[1]:
        ax.set_xlabel("step" if numbered else "checkpoint")
        if not numbered:
            ax.set_xticks(x, [r["label"] for r in rows], rotation=45, ha="right")
    axes[0][0].legend()
    fig.tight_layout()
    save_figure_to(fig, path)
