"""What every report page shares: the HTML frame, its style, and small helpers for escaped text. Pages are
static files with their style and script inline (no external assets): they open offline, from disk."""

from __future__ import annotations

import html
import math
from typing import Any

STYLE = """
:root { --line: #d8dde3; --muted: #67707b; --good: #1a7f37; --bad: #c62828; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px 20px;
       color: #1d2329; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 8px; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.banner { border: 1px solid #e0b252; background: #fff6e0; padding: 6px 10px; border-radius: 4px;
          margin: 8px 0; }
.banner.bad { border-color: #e57373; background: #fdecea; }
.good { color: var(--good); } .bad { color: var(--bad); }
button { font: inherit; border: 1px solid var(--line); background: #f5f7f9; border-radius: 12px;
         padding: 1px 9px; cursor: pointer; }
button.on { background: var(--accent); color: #fff; border-color: var(--accent); }
"""


def esc(value: Any) -> str:
    """Any value as escaped text: user text (queries, answers, overrides) is shown, never run as markup."""
    return html.escape("" if value is None else str(value), quote=True)


def number(value: Any, signed: bool = False) -> str:
    """A metric as a table shows it: 77.8, 0.153, 1,204; `+1.2` for gains; "" when absent."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:+,d}" if signed else f"{value:,d}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        sign = "+" if signed else ""
        size = abs(value)
        if size >= 1000:
            return f"{value:{sign},.0f}"
        if size >= 10 or value == 0:
            return f"{value:{sign}.1f}"
        return f"{value:{sign}.3g}" if size < 1 else f"{value:{sign}.2f}"
    return str(value)


def document(title: str, body: str, style: str = "", script: str = "") -> str:
    """A whole page: title, inline style and script, UTF-8."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}{style}</style></head>
<body>
{body}
<script>{script}</script>
</body></html>
"""
