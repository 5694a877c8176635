"""An HTML contact sheet of before/after pairs that opens offline: thumbnails are inlined as
data URIs, histograms are inline SVG, nothing is fetched. Accepted edits come first; each card
shows its decision, reason codes and scores; each metric has a histogram with its thresholds."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from common.core.errors import ImageRejected
from common.core.settings import ImageSettings
from common.media.images import load_image
from common.store.storage import Storage

THUMB = 192
MAX_ROWS = 500
BINS = 20
DECISION_ORDER = {"accepted": 0, "rejected": 1, "": 2}
COLOURS = {"accepted": "#2e7d32", "rejected": "#c62828", "": "#9e9e9e"}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>synthpipe contact sheet</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }}
h2 {{ font-size: 16px; margin: 20px 0 8px; }}
.stats {{ color: #555; margin-bottom: 16px; }}
.hists {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.hist {{ background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 6px; font-size: 12px; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 16px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px; min-width: 0;
         overflow-wrap: anywhere; word-break: break-word; }}
.card.accepted {{ border-left: 6px solid {accepted}; }}
.card.rejected {{ border-left: 6px solid {rejected}; }}
.pair {{ display: flex; gap: 6px; align-items: flex-start; flex-wrap: wrap; }}
figure {{ margin: 0; text-align: center; font-size: 11px; color: #666; }}
img {{ height: {thumb}px; width: auto; max-width: {thumb}px; object-fit: contain; display: block;
       border-radius: 4px; image-rendering: auto; background: #eee; }}
.garment img {{ height: 80px; max-width: 80px; }}
.prompt {{ margin-top: 8px; overflow-wrap: anywhere; }}
.meta {{ color: #777; font-size: 12px; overflow-wrap: anywhere; }}
.decision {{ display: inline-block; padding: 1px 6px; border-radius: 4px; color: #fff; font-size: 12px; }}
.decision.accepted {{ background: {accepted}; }}
.decision.rejected {{ background: {rejected}; }}
.decision.unscored {{ background: {unscored}; }}
.reasons {{ font-family: ui-monospace, monospace; font-size: 12px; color: {rejected}; }}
table.scores {{ font-size: 12px; border-collapse: collapse; margin-top: 4px; }}
table.scores td {{ padding: 0 8px 0 0; }}
</style></head><body>
<h1>synthpipe contact sheet</h1>
<div class="stats">{stats}</div>
{hists}
<h2>Edits</h2>
<div class="grid">
{cards}
</div></body></html>
"""


def _thumb(storage: Storage, uri: str, limits: ImageSettings, side: int = THUMB) -> str | None:
    """A JPEG data URI of the image through the safe loader, or None when it is refused."""
    try:
        im = load_image(storage.get(uri), limits).image.copy()
    except (ImageRejected, FileNotFoundError):
        return None
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(src: str | None, caption: str, cls: str = "") -> str:
    if src is None:
        return f'<figure class="{cls}"><div class="meta">unreadable</div><figcaption>{html.escape(caption)}</figcaption></figure>'
    return f'<figure class="{cls}"><img src="{src}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _card(storage: Storage, row: dict[str, Any], metrics: list[str], limits: ImageSettings) -> str:
    figs = [_figure(_thumb(storage, row["input_uri"], limits), "before"),
            _figure(_thumb(storage, row["edited_uri"], limits), "after")]
    figs += [_figure(_thumb(storage, u, limits, 80), "garment", "garment") for u in row["garment_uris"]]
    site = next((s for s in row["sites"] if s), "local")
    decision = row.get("decision") or ""
    label = decision or "unscored"
    reasons = " ".join(row.get("reasons") or [])
    scores = "".join(f"<tr><td>{html.escape(m)}</td><td>{_fmt(row.get(m))}</td></tr>"
                     for m in metrics if row.get(m) is not None)
    confidence = row.get("confidence")
    meta = [row["recipe"], row.get("origin", "pipeline")]
    if confidence is not None:
        meta.append(f"confidence {confidence:.2f}")
    meta += [f"seed {row['seed']}", site, row["edit_backend"], f"edit {row.get('edit_id', '')}"]
    return (
        f'<div class="card {html.escape(decision)}"><div class="pair">{"".join(figs)}</div>'
        f'<div class="prompt">{html.escape(row["edit_prompt"])}</div>'
        f'<div><span class="decision {html.escape(label)}">{html.escape(label)}</span> '
        f'<span class="reasons">{html.escape(reasons)}</span></div>'
        + (f'<table class="scores">{scores}</table>' if scores else "")
        + f'<div class="meta">{html.escape(" · ".join(str(m) for m in meta if m != ""))}</div></div>'
    )


def histogram_svg(metric: str, rows: list[dict[str, Any]], bounds: list[tuple[str, float]], *,
                  width: int = 280, height: int = 120, bins: int = BINS) -> str:
    """One metric's values as an inline SVG histogram, bars stacked by decision, a dashed line at
    each threshold (``bounds``: ``[(label, value)]``, e.g. ``[("min 0.7", 0.7)]``)."""
    values = [(float(r[metric]), r.get("decision") or "") for r in rows if r.get(metric) is not None]
    marks = [value for _, value in bounds]
    lo = min([v for v, _ in values] + marks, default=0.0)
    hi = max([v for v, _ in values] + marks, default=1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad_l, pad_b, pad_t = 4, 16, 14
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
    counts: list[dict[str, int]] = [dict.fromkeys(DECISION_ORDER, 0) for _ in range(bins)]
    for value, decision in values:
        b = min(int((value - lo) / (hi - lo) * bins), bins - 1)
        counts[b][decision if decision in DECISION_ORDER else ""] += 1
    top = max((sum(c.values()) for c in counts), default=0) or 1
    bar_w = plot_w / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="histogram of {html.escape(metric)}">',
             f'<text x="{pad_l}" y="11" font-size="11">{html.escape(metric)} (n={len(values)})</text>']
    for i, c in enumerate(counts):
        y = float(pad_t + plot_h)
        for decision in DECISION_ORDER:
            if not c[decision]:
                continue
            h = c[decision] / top * plot_h
            y -= h
            parts.append(f'<rect x="{pad_l + i * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{COLOURS[decision]}"/>')
    for label, value in bounds:
        x = pad_l + (value - lo) / (hi - lo) * plot_w
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + plot_h}" '
                     f'stroke="#000" stroke-dasharray="3,2"><title>{html.escape(label)}</title></line>')
        parts.append(f'<text x="{min(x + 2, width - 40):.1f}" y="{pad_t + 9}" font-size="9">{html.escape(label)}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 3}" font-size="9">{lo:.3g}</text>')
    parts.append(f'<text x="{width - pad_l}" y="{height - 3}" font-size="9" text-anchor="end">{hi:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_contact_sheet(storage: Storage, path: Path, rows: list[dict[str, Any]], summary: dict[str, Any], *,
                        limits: ImageSettings, metrics: list[str] | None = None,
                        thresholds: dict[str, list[tuple[str, float]]] | None = None) -> Path:
    metrics = metrics or []
    thresholds = thresholds or {}
    # a thumbnail needs no minimum side (small edits are shown, not trained on); every other check stays
    limits = limits.model_copy(update={"min_side": 1})
    ordered = sorted(rows, key=lambda r: (DECISION_ORDER.get(r.get("decision") or "", 3), r.get("edit_id", 0)))
    cards = [_card(storage, row, metrics, limits) for row in ordered[:MAX_ROWS]]
    hists = [f'<div class="hist">{histogram_svg(m, rows, thresholds.get(m, []))}</div>' for m in metrics]
    jobs = summary.get("jobs", {})
    stats = " · ".join(
        f"{stage}: " + ", ".join(f"{k} {v}" for k, v in by.items() if v) for stage, by in jobs.items()
        if any(by.values())
    )
    decided = {d: sum(1 for r in rows if (r.get("decision") or "") == d) for d in DECISION_ORDER}
    tally = ", ".join(f"{d or 'unscored'} {n}" for d, n in decided.items() if n)
    more = f" · showing {MAX_ROWS} of {len(rows)}" if len(rows) > MAX_ROWS else ""
    body = PAGE.format(thumb=THUMB, accepted=COLOURS["accepted"], rejected=COLOURS["rejected"],
                       unscored=COLOURS[""], stats=html.escape(f"{len(rows)} edits ({tally}) · {stats}{more}"),
                       hists=(f'<h2>Scores</h2><div class="hists">{"".join(hists)}</div>' if hists else ""),
                       cards="\n".join(cards) or "<p>No edits yet.</p>")
    path.write_text(body)
    return path
