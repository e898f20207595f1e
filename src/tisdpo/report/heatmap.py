"""Token heatmaps: show which tokens of a chosen/rejected pair got high or low weights.

* :func:`render_html` writes one self-contained HTML page (inline CSS, no scripts, no network);
  hovering a token shows its text, its value and, when given, its raw reward.
* :func:`render_png` draws a few examples with matplotlib, for reports and papers.
* :func:`summary_statistics` / :func:`render_histogram_png` summarise the values over all examples.

Building examples from a weights file (decoding token ids, checking the rows) is
:mod:`tisdpo.report.examples`.

Colours use one diverging scale for the whole page: white at ``center`` (1.0 for weights, i.e. the
DPO weight; 0.0 otherwise), red above, blue below, symmetric up to the largest deviation. Structural
tokens (what the chat template or tokenizer adds around a response: end-of-turn, EOS; weight 1 by
default) are drawn neutral grey with a dashed outline (hatched in the PNG), whatever their value, and
named as such on hover.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tisdpo.report.page import write_text
from tisdpo.report.plots import DPI as _DPI
from tisdpo.report.plots import new_figure, save_png, styled

SIDES: tuple[str, str] = ("chosen", "rejected")
_LOW_RGB = (33, 102, 172)  # blue, below center
_MID_RGB = (255, 255, 255)
_HIGH_RGB = (178, 24, 43)  # red, above center
_NAN_RGB = (204, 204, 204)
_STRUCTURAL_RGB = (232, 232, 232)
_HIST_BINS = 20
_TOP_TOKENS = 15


class _Decoder(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class HeatmapExample:
    """One preference pair to display: decoded token pieces with one value (weight) each.

    The pieces of a response concatenate to the response text. ``chosen_rewards`` and
    ``rejected_rewards`` are optional raw token rewards shown on hover next to the value.
    """

    prompt: str
    chosen_tokens: list[str]
    chosen_values: list[float]
    rejected_tokens: list[str]
    rejected_values: list[float]
    title: str = ""
    chosen_rewards: list[float] | None = None
    rejected_rewards: list[float] | None = None
    chosen_structural: list[int] | None = None  # positions of structural tokens (format, not content)
    rejected_structural: list[int] | None = None

    def structural(self, side: str) -> set[int]:
        """Positions of ``side``'s structural tokens (empty when not recorded)."""
        return set(getattr(self, f"{side}_structural") or ())

    def side(self, side: str) -> tuple[list[str], list[float], list[float] | None]:
        """(tokens, values, rewards) of ``side`` ('chosen' or 'rejected'), lengths checked."""
        if side not in SIDES:
            raise ValueError(f"side must be 'chosen' or 'rejected', got {side!r}")
        tokens = list(getattr(self, f"{side}_tokens"))
        values = [float(v) for v in getattr(self, f"{side}_values")]
        rewards = getattr(self, f"{side}_rewards")
        label = f"example {self.title!r}" if self.title else "example"
        if len(tokens) != len(values):
            raise ValueError(f"{label}: {len(tokens)} {side} tokens but {len(values)} {side} values")
        if rewards is not None:
            rewards = [float(r) for r in rewards]
            if len(rewards) != len(tokens):
                raise ValueError(f"{label}: {len(tokens)} {side} tokens but {len(rewards)} {side} rewards")
        return tokens, values, rewards


# ----------------------------------------------------------------------------- tokens


def token_pieces(tokenizer: _Decoder, token_ids: Sequence[int]) -> list[str]:
    """Per-token text pieces whose concatenation is the decoded text (special tokens kept).

    Decodes incrementally: piece i is what ``decode(ids[:i+1])`` adds to ``decode(ids[:i])``.
    A prefix ending in U+FFFD (an incomplete multi-byte character in byte-level BPE) is held back
    and given to the token that completes it. If decoding a longer prefix rewrites earlier text, the
    token is decoded on its own instead.
    """
    ids = [int(i) for i in token_ids]
    pieces: list[str] = []
    emitted = ""  # text already handed out as pieces
    for index, token_id in enumerate(ids):
        text = tokenizer.decode(ids[: index + 1], skip_special_tokens=False)
        if text.startswith(emitted):
            last = index == len(ids) - 1
            if text.endswith("\ufffd") and not last:
                pieces.append("")  # wait for the rest of the character
                continue
            pieces.append(text[len(emitted) :])
        else:
            pieces.append(tokenizer.decode([token_id], skip_special_tokens=False))
        emitted = text
    return pieces


# ----------------------------------------------------------------------------- colour scale


def _default_center(value_label: str, center: float | None) -> float:
    if center is not None:
        return float(center)
    return 1.0 if value_label == "weight" else 0.0


def _color_scale(examples: Sequence[HeatmapExample], center: float) -> float:
    """Largest |value - center| over all examples (1.0 when there is no deviation)."""
    deviations = [
        abs(v - center) for example in examples for side in SIDES for v in example.side(side)[1] if math.isfinite(v)
    ]
    scale = max(deviations, default=0.0)
    return scale if scale > 0 else 1.0


def _rgb(value: float, center: float, scale: float) -> tuple[int, int, int]:
    if not math.isfinite(value):
        return _NAN_RGB
    t = max(-1.0, min(1.0, (value - center) / scale))
    end = _HIGH_RGB if t > 0 else _LOW_RGB
    a = abs(t)
    return tuple(round(m + (e - m) * a) for m, e in zip(_MID_RGB, end))  # type: ignore[return-value]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _text_hex(value: float, center: float, scale: float) -> str:
    strong = math.isfinite(value) and abs(value - center) / scale > 0.6
    return "#ffffff" if strong else "#111111"


def _format(value: float) -> str:
    return f"{value:.4g}"


# ----------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 60em; color: #111; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-bottom: .3em; }
h3 { font-size: .95em; margin: .8em 0 .2em; text-transform: uppercase; color: #555; }
.example { border-top: 1px solid #ccc; padding: .5em 0 1em; }
.prompt { white-space: pre-wrap; background: #f4f4f4; padding: .5em; font-size: .9em;
  border-radius: 4px; max-height: 12em; overflow: auto; }
.response { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .9em;
  line-height: 1.7; }
.tok { border-radius: 2px; padding: 1px 0; }
.tok:hover { outline: 1px solid #000; }
.nl { opacity: .5; }
.empty::after { content: "\\2205"; opacity: .4; }
.legend { display: inline-block; font-size: .85em; margin: .5em 0 1em; }
.bar { width: 20em; height: 1em; border: 1px solid #999;
  background: linear-gradient(to right, %(low)s, %(mid)s, %(high)s); }
.ticks { display: flex; justify-content: space-between; width: 20em; }
.none { color: #888; font-style: italic; }
.structural { outline: 1px dashed #888; outline-offset: -1px; }
"""


def _token_html(
    token: str, value: float, reward: float | None, label: str, center: float, scale: float, structural: bool = False
) -> str:
    tip = f"{token!r}\n{label} = {_format(value)}"
    if reward is not None:
        tip += f"\nreward = {_format(reward)}"
    if structural:
        tip += "\nstructural token (format, not content)"
        style = f"background:{_hex(_STRUCTURAL_RGB)};color:#555555"
    else:
        style = f"background:{_hex(_rgb(value, center, scale))};color:{_text_hex(value, center, scale)}"
    body = html.escape(token, quote=False).replace("\r", "")
    body = body.replace("\n", '<span class="nl">\u21b5</span><br>')
    css_class = "tok empty" if token == "" else "tok"
    if structural:
        css_class += " structural"
    return f'<span class="{css_class}" style="{style}" title="{html.escape(tip, quote=True)}">{body}</span>'


def _html_page(examples: Sequence[HeatmapExample], value_label: str, center: float, page_title: str) -> str:
    scale = _color_scale(examples, center)
    css = _CSS % {
        "low": _hex(_LOW_RGB),
        "mid": _hex(_MID_RGB),
        "high": _hex(_HIGH_RGB),
    }
    label = html.escape(value_label)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(page_title)}</title>",
        f"<style>{css}</style></head><body>",
        f"<h1>{html.escape(page_title)}</h1>",
        f'<div class="legend"><div>{label} (hover a token for details)</div>',
        '<div class="bar"></div><div class="ticks">',
        f"<span>{_format(center - scale)}</span><span>{_format(center)}</span>"
        f"<span>{_format(center + scale)}</span></div>",
        f'<div><span class="swatch structural" style="background:{_hex(_STRUCTURAL_RGB)}">&nbsp;&nbsp;</span> '
        "structural token: added by the chat template or tokenizer (format, not content)</div></div>",
    ]
    for number, example in enumerate(examples):
        title = example.title or f"Example {number + 1}"
        parts.append(f'<section class="example"><h2>{html.escape(title)}</h2>')
        parts.append(f'<div class="prompt">{html.escape(example.prompt)}</div>')
        for side in SIDES:
            tokens, values, rewards = example.side(side)
            structural = example.structural(side)
            spans = [
                _token_html(
                    token,
                    value,
                    None if rewards is None else rewards[i],
                    value_label,
                    center,
                    scale,
                    i in structural,
                )
                for i, (token, value) in enumerate(zip(tokens, values))
            ]
            body = "".join(spans) if spans else '<span class="none">(empty response)</span>'
            parts.append(f'<h3>{side}</h3><div class="response">{body}</div>')
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_html(
    examples: Sequence[HeatmapExample],
    path: str | os.PathLike[str],
    value_label: str = "weight",
    center: float | None = None,
    page_title: str = "TIS-DPO token heatmap",
) -> None:
    """Write one self-contained HTML page with a token heatmap per example (atomically)."""
    write_text(path, _html_page(examples, value_label, _default_center(value_label, center), page_title))


# ----------------------------------------------------------------------------- PNG

_LINE_CHARS = 100  # characters per wrapped line
_AXES_WIDTH_IN = 9.0  # nominal width of a line; the real one is measured (_monospace_char_px)
_FONT_SIZE = _AXES_WIDTH_IN * 72 / (0.602 * _LINE_CHARS)  # DejaVu Sans Mono: 0.602 em per char
_ROW_IN = _FONT_SIZE * 1.6 / 72
_MAX_LINES_PER_RESPONSE = 8


def _colormap() -> Any:
    from matplotlib.colors import LinearSegmentedColormap

    colors = [tuple(c / 255 for c in rgb) for rgb in (_LOW_RGB, _MID_RGB, _HIGH_RGB)]
    return LinearSegmentedColormap.from_list("tisdpo_diverging", colors)


_Placed = tuple[int, str, float, bool]  # column, text, value, structural


def _wrap_tokens(
    tokens: list[str], values: list[float], structural: set[int] | None = None
) -> tuple[list[list[_Placed]], bool]:
    """Lay tokens out on lines of _LINE_CHARS: [(column, text, value, structural)] per line, truncated flag."""
    lines: list[list[_Placed]] = [[]]
    column = 0
    structural = structural or set()
    for position, (token, value) in enumerate(zip(tokens, values)):
        chunks = token.replace("\r", "").split("\n")
        for i, chunk in enumerate(chunks):
            newline = i < len(chunks) - 1
            text = chunk.replace("\t", "    ") + ("\u21b5" if newline else "")
            if len(text) > _LINE_CHARS:
                text = text[: _LINE_CHARS - 1] + "\u2026"
            if text == "" and not newline:
                text = "\u2205" if token == "" else ""
            if column + len(text) > _LINE_CHARS and column > 0:
                lines.append([])
                column = 0
            if text:
                lines[-1].append((column, text, value, position in structural))
                column += len(text)
            if newline:
                lines.append([])
                column = 0
    if lines and not lines[-1]:
        lines.pop()
    truncated = len(lines) > _MAX_LINES_PER_RESPONSE
    return lines[:_MAX_LINES_PER_RESPONSE], truncated


def _monospace_char_px() -> float:
    """Rendered width in pixels of one character of the monospace font at _FONT_SIZE."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    renderer = FigureCanvasAgg(Figure(dpi=_DPI)).get_renderer()
    font = FontProperties(family="monospace", size=_FONT_SIZE)
    width, _, _ = renderer.get_text_width_height_descent("x" * _LINE_CHARS, font, ismath=False)
    return width / _LINE_CHARS if width > 0 else _AXES_WIDTH_IN * _DPI / _LINE_CHARS


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def render_png(
    examples: Sequence[HeatmapExample],
    path: str | os.PathLike[str],
    max_examples: int = 4,
    value_label: str = "weight",
    center: float | None = None,
) -> None:
    """Draw up to ``max_examples`` examples as wrapped, coloured token boxes (PNG, atomically)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    shown = list(examples)[: max(0, max_examples)]
    mid = _default_center(value_label, center)
    scale = _color_scale(shown, mid)
    norm = Normalize(vmin=mid - scale, vmax=mid + scale)
    cmap = _colormap()

    # rows: ("title", text) / ("label", text) / ("tokens", line) / ("gap", None)
    rows: list[tuple[str, Any]] = []
    for number, example in enumerate(shown):
        title = example.title or f"Example {number + 1}"
        rows.append(("title", _one_line(f"{title}: {example.prompt}", _LINE_CHARS - 5)))
        for side in SIDES:
            tokens, values, _ = example.side(side)
            lines, truncated = _wrap_tokens(tokens, values, example.structural(side))
            rows.append(("label", side + (" (truncated)" if truncated else "")))
            rows.extend(("tokens", line) for line in lines)
            if not lines:
                rows.append(("label", "(empty response)"))
        rows.append(("gap", None))
    if rows:
        rows.pop()  # no gap after the last example
    else:
        rows.append(("label", "(no examples)"))

    # Glyph advances are rounded to whole pixels: size the axes to the measured monospace width
    # so that one x unit is exactly one character.
    axes_width_in = _LINE_CHARS * _monospace_char_px() / _DPI
    margin_top, margin_bottom, left_in, right_in = 0.3, 0.3, 0.3, 1.3
    n_rows = max(len(rows), 10)
    height = margin_top + margin_bottom + n_rows * _ROW_IN
    width = left_in + axes_width_in + right_in
    figure = new_figure(width, height)
    ax = figure.add_axes(
        (
            left_in / width,
            margin_bottom / height,
            axes_width_in / width,
            1 - (margin_top + margin_bottom) / height,
        )
    )
    ax.set_xlim(0, _LINE_CHARS)
    ax.set_ylim(n_rows, 0)
    ax.set_axis_off()

    text_args: dict[str, Any] = {"fontsize": _FONT_SIZE, "va": "center", "parse_math": False}
    for row, (kind, payload) in enumerate(rows):
        y = row + 0.5
        if kind == "title":
            ax.text(0, y, payload, fontweight="bold", ha="left", **text_args)
        elif kind == "label":
            ax.text(0, y, payload, color="#555555", style="italic", ha="left", **text_args)
        elif kind == "tokens":
            for column, text, value, structural in payload:
                if structural:
                    face = tuple(c / 255 for c in _STRUCTURAL_RGB)
                else:
                    face = cmap(norm(value)) if math.isfinite(value) else (0.8, 0.8, 0.8, 1.0)
                ax.add_patch(
                    Rectangle(
                        (column, row + 0.1),
                        len(text),
                        0.8,
                        facecolor=face,
                        edgecolor="#888888" if structural else "#bbbbbb",
                        linewidth=0.3,
                        hatch="///" if structural else None,
                    )
                )
                ax.text(
                    column,
                    y,
                    text,
                    family="monospace",
                    ha="left",
                    color="#555555" if structural else _text_hex(value, mid, scale),
                    **text_args,
                )

    bar_height = min(3.0, height - margin_top - margin_bottom)
    cax = figure.add_axes(
        (
            (left_in + axes_width_in + 0.35) / width,
            1 - (margin_top + bar_height) / height,
            0.2 / width,
            bar_height / height,
        )
    )
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    colorbar = figure.colorbar(mappable, cax=cax)
    colorbar.set_label(value_label)
    save_png(figure, path)


# ----------------------------------------------------------------------------- statistics


def _describe(values: list[float]) -> dict[str, Any]:
    array = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if array.size == 0:
        return {
            "count": 0,
            "mean": None,
            "std": None,
            "min": None,
            "max": None,
            "histogram": {"edges": [], "counts": []},
        }
    counts, edges = np.histogram(array, bins=_HIST_BINS)
    return {
        "count": int(array.size),
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def _top_tokens(examples: Sequence[HeatmapExample], side: str) -> dict[str, Any]:
    per_side = [example.side(side) for example in examples]
    use_rewards = bool(per_side) and all(rewards is not None for _, _, rewards in per_side)
    totals: dict[str, list[float]] = {}
    for tokens, values, rewards in per_side:
        scores = rewards if use_rewards and rewards is not None else values
        for token, score in zip(tokens, scores):
            key = token.strip()
            if key and math.isfinite(score):
                totals.setdefault(key, []).append(score)
    stats = [(key, float(np.mean(s)), len(s)) for key, s in totals.items()]
    frequent = [item for item in stats if item[2] >= 2]
    pool = frequent if len(frequent) >= _TOP_TOKENS else stats

    def rows(items: list[tuple[str, float, int]]) -> list[dict[str, Any]]:
        return [{"token": t, "mean": m, "count": c} for t, m, c in items[:_TOP_TOKENS]]

    return {
        "source": "rewards" if use_rewards else "values",
        "highest": rows(sorted(pool, key=lambda item: (-item[1], -item[2], item[0]))),
        "lowest": rows(sorted(pool, key=lambda item: (item[1], -item[2], item[0]))),
    }


def summary_statistics(examples: Sequence[HeatmapExample]) -> dict[str, Any]:
    """Per-side value statistics and the tokens with the highest / lowest mean score.

    Returns ``{"chosen": S, "rejected": S, "top_tokens": {"chosen": T, "rejected": T}}`` where S
    has ``count, mean, std (population), min, max`` and ``histogram {"edges", "counts"}`` (20
    bins) over the finite values, and T has ``source`` ("rewards" when every example has raw
    rewards for that side, else "values") and ``highest`` / ``lowest``: up to 15 entries
    ``{"token", "mean", "count"}`` over whitespace-stripped tokens (whitespace-only tokens are
    skipped) seen at least twice, or at least once when fewer than 15 such tokens exist.
    """
    result: dict[str, Any] = {}
    for side in SIDES:
        result[side] = _describe([v for example in examples for v in example.side(side)[1]])
    result["top_tokens"] = {side: _top_tokens(examples, side) for side in SIDES}
    return result


def render_histogram_png(
    examples: Sequence[HeatmapExample],
    path: str | os.PathLike[str],
    value_label: str = "weight",
) -> None:
    """Histogram of the values of each side (shared bins), side by side (PNG, atomically)."""
    per_side = {
        side: np.asarray(
            [v for example in examples for v in example.side(side)[1] if math.isfinite(v)],
            dtype=np.float64,
        )
        for side in SIDES
    }
    everything = np.concatenate(list(per_side.values()))
    if everything.size:
        low, high = float(everything.min()), float(everything.max())
        if low == high:
            low, high = low - 0.5, high + 0.5
        bins = np.linspace(low, high, _HIST_BINS + 1)
    else:
        bins = np.linspace(0.0, 1.0, _HIST_BINS + 1)

    with styled():
        figure = new_figure(9, 3.5, layout="constrained")
        axes = figure.subplots(1, 2, sharex=True)
        colors = {"chosen": _hex(_HIGH_RGB), "rejected": _hex(_LOW_RGB)}
        for ax, side in zip(axes, SIDES):
            values = per_side[side]
            ax.hist(values, bins=bins, color=colors[side], edgecolor="white")
            if values.size:
                ax.axvline(values.mean(), color="#222222", linestyle="--", linewidth=1)
                subtitle = f"n={values.size}, mean={_format(values.mean())}"
            else:
                subtitle = "no values"
            ax.set_title(f"{side} ({subtitle})")
            ax.set_xlabel(value_label)
            ax.set_ylabel("tokens")
        save_png(figure, path)
