"""The report page: one self-contained HTML file (inline CSS, images as ``data:image/png;base64`` URIs,
no scripts, nothing fetched from anywhere)."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

__all__ = ["Figure", "render_page", "render_value"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1240px; color: #212121; background: #ffffff; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; border-bottom: 1px solid #e0e0e0; padding-bottom: 4px; margin-top: 32px; }
.sub { color: #616161; margin-top: 0; }
figure { margin: 12px 0 24px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eeeeee; }
figcaption { color: #424242; font-size: 14px; margin-top: 6px; }
.note { color: #8d6e63; font-style: italic; }
.warnings { background: #fff3e0; border: 2px solid #e65100; border-left-width: 8px; border-radius: 4px;
            padding: 8px 16px; margin: 16px 0; color: #3e2723; }
.warnings h2 { color: #bf360c; border: none; margin: 4px 0; font-size: 18px; }
.warnings li { margin: 4px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border: 1px solid #e0e0e0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #fafafa; border: 1px solid #e0e0e0; padding: 10px; font-size: 12.5px; overflow-x: auto; }
nav a { margin-right: 14px; }
"""


@dataclass
class Figure:
    """One figure of the page: its element id, section title, PNG bytes and caption (plain text)."""

    id: str
    title: str
    png: bytes
    caption: str


def _number(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}"


def render_value(value: Any) -> str:
    """HTML for any JSON value: dicts become key/value tables (nested to any depth), lists of dicts with
    the same keys become one table with a column per key, other lists a comma-separated line."""
    if isinstance(value, dict):
        if not value:
            return "<em>empty</em>"
        rows = "".join(f"<tr><th>{escape(str(k))}</th>{_cell(v)}</tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, dict) for v in value):
            keys: dict[str, None] = {}
            for v in value:
                keys.update(dict.fromkeys(map(str, v)))
            head = "".join(f"<th>{escape(k)}</th>" for k in keys)
            body = "".join("<tr>" + "".join(_cell(v.get(k, "")) for k in keys) + "</tr>" for v in value)
            return f"<table><tr>{head}</tr>{body}</table>"
        return escape(", ".join(_plain(v) for v in value)) or "<em>empty</em>"
    return escape(_plain(value))


def _plain(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, int | float):
        return _number(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, dict | list | tuple):
        return str(value)
    return str(value)


def _cell(value: Any) -> str:
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f'<td class="num">{render_value(value)}</td>' if numeric else f"<td>{render_value(value)}</td>"


def _img(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(fig.title)}">'


def render_page(
    *,
    title: str,
    subtitle: str,
    figures: Sequence[Figure],
    notes: Sequence[str],
    metrics: dict[str, Any] | None,
    config_text: str | None,
) -> str:
    """The whole page as a string."""
    nav = " ".join(f'<a href="#{f.id}">{escape(f.title)}</a>' for f in figures)
    nav += ' <a href="#metrics">Metrics</a> <a href="#config">Config</a>'
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(subtitle)}</p>',
    ]
    if notes:  # what the page cannot show, or a run that did not finish: first thing on the page
        items = "".join(f"<li>{escape(note)}</li>" for note in notes)
        parts.append(
            f'<div class="warnings" id="warnings" role="alert"><h2>Warning{"s" if len(notes) > 1 else ""}'
            f"</h2><ul>{items}</ul></div>"
        )
    parts.append(f"<nav>{nav}</nav>")
    for fig in figures:
        parts.append(
            f'<section id="{escape(fig.id)}"><h2>{escape(fig.title)}</h2><figure>{_img(fig)}'
            f"<figcaption>{escape(fig.caption)}</figcaption></figure></section>"
        )
    metrics_html = render_value(metrics) if metrics else '<p class="note">this run has no metrics.json</p>'
    parts.append(f'<section id="metrics"><h2>Metrics</h2>{metrics_html}</section>')
    config_html = (
        f"<pre>{escape(config_text)}</pre>"
        if config_text
        else '<p class="note">this run has no config.yaml and no readable checkpoint</p>'
    )
    parts.append(f'<section id="config"><h2>Config (config.yaml)</h2>{config_html}</section>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
