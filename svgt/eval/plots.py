"""Figures for the evaluation report (PNG through matplotlib's Agg backend, no display needed).

* :func:`plot_score_trajectories`: the discriminator score per generated token, one line per method
  (mean over adversarial prompts, with a band of +-1 standard error), the decision boundary at 0 and the
  bridge refresh points marked.
* :func:`plot_main_table`: a grouped bar chart of the main table's rate columns per method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svgt.core.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # never a GUI backend: the step runs on headless machines
    import matplotlib.pyplot as plt

    return plt


def _trajectory_array(method: str, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    if isinstance(rows, np.ndarray):
        arr = rows.astype(np.float64)
    else:
        if len(rows) == 0:
            raise ValueError(f"plot_score_trajectories: method {method!r} has no trajectories")
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise ValueError(
                f"plot_score_trajectories: method {method!r} has trajectories of different lengths "
                f"{sorted(lengths)}; pad or cut them to one length (tokens after EOS as nan)"
            )
        arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"plot_score_trajectories: method {method!r} needs a non-empty [prompts, tokens] array, got shape "
            f"{arr.shape}"
        )
    if np.isinf(arr).any():
        raise ValueError(f"plot_score_trajectories: method {method!r} has infinite scores")
    return arr


def plot_score_trajectories(
    scores: Mapping[str, Sequence[Sequence[float]] | np.ndarray],
    out_path: str | Path,
    *,
    refresh_points: Sequence[int] = (),
    title: str = "Discriminator score per generated token (adversarial prompts)",
) -> Path:
    """``scores[method]`` is a [prompts, tokens] array of per-token scores (nan after a row has stopped).

    The line is the mean over prompts still generating at each token, the band +-1 standard error;
    s > 0 is judged harmful, so the boundary is drawn at 0. ``refresh_points`` are the token indices at
    which the bridge was refreshed.
    """
    if not scores:
        raise ValueError("plot_score_trajectories: no methods to plot")
    arrays = {m: _trajectory_array(m, s) for m, s in scores.items()}
    if any(p < 0 for p in refresh_points):
        raise ValueError(f"plot_score_trajectories: refresh points must be token indices >= 0, got {refresh_points}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        for method, arr in arrays.items():
            x = np.arange(arr.shape[1])
            count = (~np.isnan(arr)).sum(axis=0)
            live = count > 0
            mean = np.full(arr.shape[1], np.nan)
            sem = np.zeros(arr.shape[1])
            mean[live] = np.nanmean(arr[:, live], axis=0)
            spread = np.nanstd(arr[:, live], axis=0)
            sem[live] = spread / np.sqrt(count[live])
            (line,) = ax.plot(x, mean, label=f"{method} (n={arr.shape[0]})")
            ax.fill_between(x, mean - sem, mean + sem, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(0.0, color="black", linestyle="--", linewidth=1, label="decision boundary (s = 0)")
        for i, p in enumerate(refresh_points):
            ax.axvline(p, color="grey", linestyle=":", linewidth=0.8, label="bridge refresh" if i == 0 else None)
        ax.set_xlabel("generated token index")
        ax.set_ylabel("discriminator score s (> 0: harmful)")
        ax.set_title(title)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        return _save(fig, out_path)
    finally:
        plt.close(fig)


def plot_main_table(
    values: Mapping[str, Mapping[str, float]],
    out_path: str | Path,
    *,
    errors: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    title: str = "Main results",
) -> Path:
    """Grouped bars: ``values[method][column]`` (rates in [0, 1], shown in %), optional 95% CI whiskers
    ``errors[method][column] = (low, high)``. Every method must have the same columns."""
    if not values:
        raise ValueError("plot_main_table: no methods to plot")
    columns = list(next(iter(values.values())))
    if not columns:
        raise ValueError("plot_main_table: methods have no columns")
    for method, row in values.items():
        if list(row) != columns:
            raise ValueError(f"plot_main_table: method {method!r} has columns {list(row)}, expected {columns}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns) * max(1, len(values)) / 2), 4.5))
    try:
        width = 0.8 / len(values)
        x = np.arange(len(columns))
        for i, (method, row) in enumerate(values.items()):
            heights = np.array([100 * row[c] for c in columns], dtype=np.float64)
            yerr = None
            if errors is not None and method in errors:
                lo = np.array([100 * errors[method][c][0] for c in columns])
                hi = np.array([100 * errors[method][c][1] for c in columns])
                yerr = np.vstack([np.clip(heights - lo, 0, None), np.clip(hi - heights, 0, None)])
            ax.bar(x + (i - (len(values) - 1) / 2) * width, heights, width, yerr=yerr, capsize=3, label=method)
        ax.set_xticks(x, columns, rotation=15, ha="right")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.legend(fontsize="small")
        fig.tight_layout()
        return _save(fig, out_path)
    finally:
        plt.close(fig)


def plot_frontier(
    points: Mapping[str, tuple[float, float]],
    out_path: str | Path,
    *,
    errors: Mapping[str, tuple[tuple[float, float], tuple[float, float]]] | None = None,
    xlabel: str = "over-refusal on benign sensitive prompts (%)",
    ylabel: str = "harmful prompts answered (%)",
    title: str = "Safety / over-refusal frontier (lower left is better)",
) -> Path:
    """One point per method: ``points[method] = (x, y)`` as rates in [0, 1] (both lower is better), optional
    95% intervals ``errors[method] = ((x_lo, x_hi), (y_lo, y_hi))``. SVGT's operating points ("svgt" and
    "svgt@<threshold>") are joined by a line in order of x, as a guardrail's sensitivity settings are."""
    if not points:
        raise ValueError("plot_frontier: no points to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    try:
        for name, (x, y) in points.items():
            xerr = yerr = None
            if errors is not None and name in errors:
                (xl, xh), (yl, yh) = errors[name]
                xerr = [[max(0.0, 100 * (x - xl))], [max(0.0, 100 * (xh - x))]]
                yerr = [[max(0.0, 100 * (y - yl))], [max(0.0, 100 * (yh - y))]]
            marker = "o" if name.startswith("svgt") and "inject" not in name else "s"
            ax.errorbar(100 * x, 100 * y, xerr=xerr, yerr=yerr, fmt=marker, capsize=2, alpha=0.85)
            ax.annotate(name, (100 * x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize="small")
        svgt = sorted(p for n, p in points.items() if n == "svgt" or (n.startswith("svgt@") and n != "svgt@off"))
        if len(svgt) > 1:
            ax.plot([100 * x for x, _ in svgt], [100 * y for _, y in svgt], "-", color="tab:blue", alpha=0.4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=-2)
        ax.set_ylim(bottom=-2)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return _save(fig, out_path)
    finally:
        plt.close(fig)


def write_plots(results: dict[str, Any], trajectories: dict[str, list[list[float]]], refresh_interval: int,
                max_new_tokens: int, plots_dir: Path) -> dict[str, str]:
    """The evaluate step's plots (score trajectories, main table, frontier): name -> path written."""
    written = {}
    if trajectories:
        width = max(len(r) for rows in trajectories.values() for r in rows)
        padded = {m: [r + [math.nan] * (width - len(r)) for r in rows] for m, rows in trajectories.items()}
        path = plot_score_trajectories(padded, plots_dir / "eval_trajectory.png",
                                       refresh_points=list(range(refresh_interval, width, refresh_interval)))
        written["trajectory"] = str(path)
    values, errors = {}, {}
    for name, entry in results["methods"].items():
        for key in ("harmful_response_rate", "harmful_response_rate_heldout", "asr", "refusal_harmful",
                    "over_refusal_sensitive"):
            if key in entry:
                values.setdefault(key, {})[name] = entry[key]["rate"]
                errors.setdefault(key, {})[name] = tuple(entry[key]["ci95"])
    if values:
        written["main"] = str(plot_main_table(values, plots_dir / "eval_main.png", errors=errors))
    points, bars = {}, {}
    x_key = "over_refusal_sensitive" if any("over_refusal_sensitive" in e for e in results["methods"].values()) \
        else "over_refusal_benign"
    for name, e in results["methods"].items():
        if "harmful_compliance" in e and x_key in e:
            points[name] = (e[x_key]["rate"], e["harmful_compliance"]["rate"])
            bars[name] = (tuple(e[x_key]["ci95"]), tuple(e["harmful_compliance"]["ci95"]))
    if points:
        label = ("over-refusal on benign sensitive prompts (%)" if x_key == "over_refusal_sensitive"
                 else "over-refusal on benign prompts (%)")
        written["frontier"] = str(plot_frontier(points, plots_dir / "eval_frontier.png", errors=bars, xlabel=label))
    return written


def _save(fig, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return out_path
