"""Figures of the reports, in one style: the reward-against-KL frontier, and atomic PNG saving.

Every figure is built with matplotlib's object API (``Figure`` + the Agg canvas), so drawing never
touches pyplot's global state and works without a display. :data:`STYLE` is the one look shared by
the plots of ``tisdpo compare``, the pipeline's report and the token heatmaps' histogram.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tisdpo.utils import atomic_path

DPI = 120
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
KL_LABEL = "KL(policy ‖ reference) per response, nats (sampled estimate)"


@contextmanager
def styled() -> Iterator[None]:
    """Draw inside this block to get :data:`STYLE` (rc parameters are read when artists are made)."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float, **kwargs: Any) -> Any:
    """A matplotlib ``Figure`` on the Agg canvas (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, **kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Any, path: str | os.PathLike[str], dpi: int = DPI) -> None:
    """Save ``figure`` as a PNG at ``path`` atomically (a temp file renamed into place).

    Warnings about glyphs missing from the font (emoji or CJK in token text) are silenced: the
    figure is still written, with a placeholder box for those characters.
    """
    with atomic_path(os.fspath(path)) as temp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure.savefig(temp, format="png", dpi=dpi)


# ----------------------------------------------------------------------------- frontier


@dataclass
class FrontierPoint:
    """One (KL, reward) measurement; the errors are drawn as +-bars when > 0."""

    kl: float
    reward: float
    kl_err: float = 0.0
    reward_err: float = 0.0

    @property
    def finite(self) -> bool:
        return self.kl is not None and self.reward is not None and math.isfinite(self.kl) and math.isfinite(self.reward)


@dataclass
class FrontierSeries:
    """A run on the frontier plot: one point (a final model) or several (its checkpoints, in order).

    Series with the same ``group`` (e.g. the seeds of one objective) share a colour and one legend
    entry; by default every series is its own group.
    """

    label: str
    points: list[FrontierPoint] = field(default_factory=list)
    group: str | None = None

    @property
    def key(self) -> str:
        return self.group if self.group is not None else self.label


def _draw_series(axes: Any, series: FrontierSeries, points: list[FrontierPoint], color: str, legend: bool) -> None:
    label = series.key if legend else None
    kls, rewards = [p.kl for p in points], [p.reward for p in points]
    if len(points) == 1:
        axes.errorbar(
            kls,
            rewards,
            xerr=[p.kl_err or 0.0 for p in points],
            yerr=[p.reward_err or 0.0 for p in points],
            fmt="o",
            color=color,
            capsize=3,
            label=label,
        )
        axes.annotate(
            series.label, (kls[0], rewards[0]), textcoords="offset points", xytext=(5, 5), fontsize=8, color=color
        )
    else:
        axes.plot(kls, rewards, "-o", color=color, alpha=0.7, markersize=3, label=label)
        axes.plot(kls[-1:], rewards[-1:], "o", color=color, markersize=6)  # the final model stands out


def frontier_plot(
    series: Sequence[FrontierSeries],
    path: str | os.PathLike[str],
    *,
    reward_label: str = "reward (mean over responses)",
    kl_label: str = KL_LABEL,
    title: str | None = None,
    matched_kl: float | None = None,
    baseline_reward: float | None = None,
) -> int:
    """Reward (y) against KL to the reference (x), the frontier plot of the DPO paper; PNG, atomically.

    A one-point series is a marker with its error bars and its label written beside it; a longer
    series is a line through its checkpoints with the last (final) point enlarged. ``matched_kl``
    draws a dotted vertical line (the KL at which objectives are compared), ``baseline_reward`` a
    dotted horizontal one (the reference model's reward). Non-finite points are left out. Returns
    the number of series drawn.
    """
    with styled():
        figure = new_figure(7.0, 4.5, layout="constrained")
        axes = figure.add_subplot(1, 1, 1)
        colors: dict[str, str] = {}
        drawn = 0
        for one in series:
            points = [p for p in one.points if p.finite]
            if not points:
                continue
            new_group = one.key not in colors
            color = colors.setdefault(one.key, f"C{len(colors) % 10}")
            _draw_series(axes, one, points, color, legend=new_group)
            drawn += 1
        if matched_kl is not None and math.isfinite(matched_kl):
            axes.axvline(matched_kl, color="grey", linestyle=":", linewidth=1, label=f"matched KL {matched_kl:.3g}")
        if baseline_reward is not None and math.isfinite(baseline_reward):
            axes.axhline(baseline_reward, color="grey", linestyle="--", linewidth=1, label="baseline reward")
        axes.set_xlabel(kl_label)
        axes.set_ylabel(reward_label)
        axes.set_title(title or "Reward against KL to the reference")
        if drawn:
            axes.legend(loc="best")
        save_png(figure, path)
    return drawn


# ----------------------------------------------------------------------------- frontier bands


@dataclass
class FrontierBand:
    """A mean frontier over seeds on a KL grid, with its pointwise interval, and the raw points."""

    label: str
    grid: list[float]
    mean: list[float]
    lo: list[float]
    hi: list[float]
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class FrontierPanel:
    title: str
    bands: list[FrontierBand]
    levels: list[float] = field(default_factory=list)


def frontier_panel(
    title: str,
    runs: dict[str, dict[int, Sequence[tuple[float, float]]]],
    sft: dict[int, float],
    levels: Sequence[float],
) -> FrontierPanel:
    """A panel of every arm's mean frontier (``runs``: arm -> seed -> (KL, reward) points; ``sft``: the
    SFT reward per seed, the frontier's KL-0 point), on a grid up to the largest KL any run reached."""
    from tisdpo.report.frontier import max_kl, mean_curve

    top = max((max_kl(points) for seeds in runs.values() for points in seeds.values()), default=1.0)
    grid = [float(k) for k in np.linspace(0.0, max(top, 1e-6), 60)]
    bands = []
    for arm, seeds in runs.items():
        seeds = {seed: points for seed, points in seeds.items() if seed in sft}
        if not seeds:
            continue
        mean, lo, hi = mean_curve(seeds, sft, grid)
        # Drawn up to the KL the arm's median seed reached: the flat frontier beyond is not a measurement.
        reach = float(np.median([max_kl(points) for points in seeds.values()]))
        drawn = [k <= reach for k in grid]
        mean, lo, hi = ([v if keep else math.nan for v, keep in zip(values, drawn)] for values in (mean, lo, hi))
        raw = [(max(0.0, k), r) for points in seeds.values() for k, r in points]
        bands.append(FrontierBand(arm, grid, mean, lo, hi, raw))
    return FrontierPanel(title, bands, list(levels))


def frontier_bands_plot(
    panels: Sequence[FrontierPanel],
    path: str | os.PathLike[str],
    *,
    reward_label: str = "reward",
    kl_label: str = KL_LABEL,
    columns: int = 2,
) -> None:
    """One panel per comparison: each arm's mean frontier as a line with a shaded 95% band, its runs'
    (KL, reward) points faint behind it, and the common KL levels as dotted verticals. PNG, atomically."""
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    with styled():
        figure = new_figure(max(7.0, 5.2 * columns), (4.5 if rows == 1 else 3.8 * rows), layout="constrained")
        for index, panel in enumerate(panels):
            axes = figure.add_subplot(rows, columns, index + 1)
            for number, band in enumerate(panel.bands):
                color = f"C{number % 10}"
                if band.points:
                    axes.scatter(*zip(*band.points), s=6, color=color, alpha=0.25, linewidths=0)
                axes.plot(band.grid, band.mean, color=color, linewidth=1.6, label=band.label)
                finite = [
                    (k, lo, hi)
                    for k, lo, hi in zip(band.grid, band.lo, band.hi)
                    if math.isfinite(lo) and math.isfinite(hi)
                ]
                if finite:
                    kls, los, his = zip(*finite)
                    axes.fill_between(kls, los, his, color=color, alpha=0.15, linewidth=0)
            for level in panel.levels:
                axes.axvline(level, color="grey", linestyle=":", linewidth=1)
            axes.set_title(panel.title)
            axes.set_xlabel(kl_label if index // columns == rows - 1 else "")
            axes.set_ylabel(reward_label)
            axes.legend(loc="lower right")
        save_png(figure, path)
