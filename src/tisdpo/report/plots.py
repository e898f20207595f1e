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
