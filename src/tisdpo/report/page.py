"""Self-contained report pages: one HTML file with its CSS inline and its PNGs embedded, and text files
written atomically."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence

from tisdpo.utils import atomic_path

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#111}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
    "img{max-width:100%}"
)


def png_data_uri(path: str | os.PathLike[str]) -> str:
    """The PNG file at ``path`` as a ``data:`` URI, to embed in a page that needs no other file."""
    with open(path, "rb") as handle:
        return "data:image/png;base64," + base64.b64encode(handle.read()).decode()


def figure_html(title: str, path: str | os.PathLike[str]) -> str:
    """A titled, embedded image."""
    return f"<h2>{html.escape(title)}</h2><img src='{png_data_uri(path)}' alt='{html.escape(title, quote=True)}'>"


def html_page(title: str, body: Sequence[str], heading: str | None = None) -> str:
    """A whole HTML document: ``title`` in the tab, ``heading`` (default: the title) as <h1>, then ``body``."""
    return "\n".join(
        [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>",
            f"<h1>{html.escape(heading or title)}</h1>",
            *body,
            "</body></html>",
        ]
    )


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (ending in a newline) to ``path`` atomically."""
    with atomic_path(os.fspath(path)) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text if text.endswith("\n") else text + "\n")
