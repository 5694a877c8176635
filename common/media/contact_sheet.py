"""An HTML contact sheet of before/after pairs that opens offline: thumbnails are inlined as
data URIs, histograms are inline SVG, nothing is fetched. Accepted edits come first; each card
shows its decision, reason codes and scores; each metric has a histogram with its thresholds.
Built from a stream (:class:`ContactSheet`): counts and histograms grow as rows come, and only
a bounded sample of rows (the first ``MAX_ROWS`` of each decision) is kept for the cards."""

from __future__ import annotations

import base64
import html
import io
import math
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


def _card(storage: Storage, row: dict[str, Any], metrics: list[str], limits: ImageSettings,
          thumbs: dict[tuple[str, int], str | None] | None = None) -> str:
    """One edit's card; ``thumbs`` keeps thumbnails already made (a photo on many cards is read once)."""
    made = {} if thumbs is None else thumbs

    def thumb(uri: str, side: int = THUMB) -> str | None:
        if (uri, side) not in made:
            made[(uri, side)] = _thumb(storage, uri, limits, side)
        return made[(uri, side)]

    figs = [_figure(thumb(row["input_uri"]), "before"), _figure(thumb(row["edited_uri"]), "after")]
    figs += [_figure(thumb(u, 80), "garment", "garment") for u in row["garment_uris"]]
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


class Histogram:
    """One metric's histogram, filled one value at a time over a range known in advance
    (``lo``..``hi``: the values' range, widened to take in every threshold of ``bounds``)."""

    def __init__(self, metric: str, value_range: tuple[float, float] | None, bounds: list[tuple[str, float]],
                 bins: int = BINS) -> None:
        marks = [value for _, value in bounds]
        ends = list(value_range or ()) + marks
        lo, hi = min(ends, default=0.0), max(ends, default=1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.metric, self.bounds, self.lo, self.hi, self.bins, self.n = metric, bounds, lo, hi, bins, 0
        self.counts: list[dict[str, int]] = [dict.fromkeys(DECISION_ORDER, 0) for _ in range(bins)]

    def add(self, value: float | None, decision: str) -> None:
        if value is None or not math.isfinite(value):
            return
        b = min(max(int((float(value) - self.lo) / (self.hi - self.lo) * self.bins), 0), self.bins - 1)
        self.counts[b][decision if decision in DECISION_ORDER else ""] += 1
        self.n += 1

    def svg(self, *, width: int = 280, height: int = 120) -> str:
        """Inline SVG: bars stacked by decision, a dashed line at each threshold."""
        lo, hi, bins = self.lo, self.hi, self.bins
        pad_l, pad_b, pad_t = 4, 16, 14
        plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
        top = max((sum(c.values()) for c in self.counts), default=0) or 1
        bar_w = plot_w / bins
        metric = self.metric
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
                 f'aria-label="histogram of {html.escape(metric)}">',
                 f'<text x="{pad_l}" y="11" font-size="11">{html.escape(metric)} (n={self.n})</text>']
        for i, c in enumerate(self.counts):
            y = float(pad_t + plot_h)
            for decision in DECISION_ORDER:
                if not c[decision]:
                    continue
                h = c[decision] / top * plot_h
                y -= h
                parts.append(f'<rect x="{pad_l + i * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                             f'height="{h:.1f}" fill="{COLOURS[decision]}"/>')
        for label, value in self.bounds:
            x = pad_l + (value - lo) / (hi - lo) * plot_w
            parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + plot_h}" '
                         f'stroke="#000" stroke-dasharray="3,2"><title>{html.escape(label)}</title></line>')
            parts.append(f'<text x="{min(x + 2, width - 40):.1f}" y="{pad_t + 9}" font-size="9">'
                         f'{html.escape(label)}</text>')
        parts.append(f'<text x="{pad_l}" y="{height - 3}" font-size="9">{lo:.3g}</text>')
        parts.append(f'<text x="{width - pad_l}" y="{height - 3}" font-size="9" text-anchor="end">{hi:.3g}</text>')
        parts.append("</svg>")
        return "".join(parts)


#: what a card shows of a row (the sample keeps only these, and the metrics)
CARD_KEYS = ("input_uri", "edited_uri", "garment_uris", "sites", "decision", "reasons", "confidence", "recipe",
             "origin", "seed", "edit_backend", "edit_id", "edit_prompt")


class ContactSheet:
    """The contact sheet of a stream of rows, in bounded memory: counts and histograms are filled
    as rows come; the cards are the first ``max_rows`` rows in (decision, arrival) order, so at
    most ``max_rows`` rows of each decision are kept. ``ranges`` gives each metric's value range
    (the histograms' axes must be fixed before the first value arrives)."""

    def __init__(self, metrics: list[str], ranges: dict[str, tuple[float, float]],
                 thresholds: dict[str, list[tuple[str, float]]] | None = None, *, max_rows: int = MAX_ROWS) -> None:
        thresholds = thresholds or {}
        self.metrics, self.max_rows, self.total = metrics, max_rows, 0
        self.hists = [Histogram(m, ranges.get(m), thresholds.get(m, [])) for m in metrics]
        self.decided: dict[str, int] = dict.fromkeys(DECISION_ORDER, 0)
        self.samples: dict[int, list[dict[str, Any]]] = {}

    def add(self, row: dict[str, Any]) -> None:
        decision = row.get("decision") or ""
        self.total += 1
        if decision in self.decided:
            self.decided[decision] += 1
        for hist in self.hists:
            value = row.get(hist.metric)
            hist.add(None if value is None else float(value), decision)
        kept = self.samples.setdefault(DECISION_ORDER.get(decision, 3), [])
        if len(kept) < self.max_rows:
            kept.append({k: row.get(k) for k in (*CARD_KEYS, *self.metrics)})

    def write(self, storage: Storage, path: Path, summary: dict[str, Any], *, limits: ImageSettings) -> Path:
        # a thumbnail needs no minimum side (small edits are shown, not trained on); every other check stays
        limits = limits.model_copy(update={"min_side": 1})
        ordered = [row for order in sorted(self.samples) for row in
                   sorted(self.samples[order], key=lambda r: r.get("edit_id") or 0)][:self.max_rows]
        thumbs: dict[tuple[str, int], str | None] = {}  # at most the cards' images
        cards = [_card(storage, row, self.metrics, limits, thumbs) for row in ordered]
        hists = [f'<div class="hist">{hist.svg()}</div>' for hist in self.hists]
        jobs = summary.get("jobs", {})
        stats = " · ".join(
            f"{stage}: " + ", ".join(f"{k} {v}" for k, v in by.items() if v) for stage, by in jobs.items()
            if any(by.values())
        )
        tally = ", ".join(f"{d or 'unscored'} {n}" for d, n in self.decided.items() if n)
        more = f" · showing {self.max_rows} of {self.total}" if self.total > self.max_rows else ""
        body = PAGE.format(thumb=THUMB, accepted=COLOURS["accepted"], rejected=COLOURS["rejected"],
                           unscored=COLOURS[""],
                           stats=html.escape(f"{self.total} edits ({tally}) · {stats}{more}"),
                           hists=(f'<h2>Scores</h2><div class="hists">{"".join(hists)}</div>' if hists else ""),
                           cards="\n".join(cards) or "<p>No edits yet.</p>")
        path.write_text(body)
        return path
