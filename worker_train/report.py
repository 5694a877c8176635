"""The flywheel's report: ``report.json`` (per round: acceptance and metrics with bootstrap 95%
intervals; round-to-round comparisons) and ``report.html`` (plots drawn as inline SVG, so no
plotting library is needed, and a strip of the same held-out items across rounds).

Intervals are percentile bootstraps over the held-out items (2000 resamples, fixed seed).
Comparisons are paired, since every round remakes the same items with the same seeds. A round
is called better or worse only on enough evidence: at least ``train.min_eval_items`` paired
items, a paired difference whose interval excludes zero, and the two rounds' own intervals
apart. Fewer items is "not enough evidence"; otherwise it is "within noise".
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

from common.store.storage import Storage

RESAMPLES = 2000


def bootstrap_ci(values: list[float], *, seed: int, resamples: int = RESAMPLES) -> list[float]:
    """Percentile 95% interval of the mean of ``values`` (both ends the mean for one value)."""
    if not values:
        return [float("nan"), float("nan")]
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return [round(means[int(0.025 * (resamples - 1))], 6), round(means[int(0.975 * (resamples - 1))], 6)]


def _summary(values: list[float], seed: int) -> dict[str, Any]:
    return {"mean": round(sum(values) / len(values), 6) if values else None, "ci95": bootstrap_ci(values, seed=seed)}


def _accepted(item: dict[str, Any]) -> float:
    return 1.0 if item["decision"] == "accepted" else 0.0


NOT_ENOUGH = "not enough evidence"


def paired_verdict(pairs: list[tuple[float, float]], *, seed: int, min_items: int,
                   higher_is_better: bool = True) -> dict[str, Any] | None:
    """Round k's value minus round k-1's over paired items (``(before, after)``), with a bootstrap
    interval and a verdict: better or worse only with ``min_items`` pairs, a paired interval
    without zero and the rounds' own intervals apart; else within noise or not enough evidence."""
    if not pairs:
        return None
    diffs = [b - a for a, b in pairs]
    lo, hi = bootstrap_ci(diffs, seed=seed)
    mean = sum(diffs) / len(diffs)
    then, now = bootstrap_ci([a for a, _ in pairs], seed=seed), bootstrap_ci([b for _, b in pairs], seed=seed)
    overlap = then[0] <= now[1] and now[0] <= then[1]
    within = lo <= 0 <= hi or overlap
    if len(diffs) < min_items:
        verdict = NOT_ENOUGH
    else:
        verdict = "within noise" if within else ("better" if (mean > 0) == higher_is_better else "worse")
    return {"diff": round(mean, 6), "ci95": [lo, hi], "pairs": len(diffs), "min_pairs": min_items,
            "ci95_before": then, "ci95_after": now, "intervals_overlap": overlap, "within_noise": within,
            "verdict": verdict}


def _paired(prev: dict[str, Any], cur: dict[str, Any], value: Any, seed: int, min_items: int) -> dict[str, Any] | None:
    """Round ``cur`` minus round ``prev`` over the items both have a value for, with its verdict."""
    before = {i["item_set_id"]: value(i) for i in prev["items"]}
    pairs = [(before[i["item_set_id"]], value(i)) for i in cur["items"]
             if value(i) is not None and before.get(i["item_set_id"]) is not None]
    return paired_verdict(pairs, seed=seed, min_items=min_items)


def build_report(target: str, results: list[dict[str, Any]], eval_sets: int, *, seed: int,
                 min_items: int = 1) -> dict[str, Any]:
    """report.json's object; a round is called better or worse only with at least ``min_items``
    paired held-out items, a paired interval without zero and the rounds' intervals apart."""
    rounds: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    reasons: dict[str, dict[str, int]] = {}
    for res in results:
        items = res["items"]
        accepted = int(sum(_accepted(i) for i in items))
        names = sorted({m for i in items for m in i["metrics"]})
        metrics = {m: _summary([i["metrics"][m] for i in items if m in i["metrics"]], seed) for m in names}
        rounds.append({"round": res["round"], "adapter": res["adapter"],
                       "eval_edits": sum(1 for i in items if i["edit_id"] is not None), "accepted": accepted,
                       "acceptance": round(accepted / eval_sets, 6), "metrics": metrics})
        reasons[str(res["round"])] = dict(Counter(r for i in items for r in i["reasons"]))
    for prev, cur in zip(results, results[1:], strict=False):
        entry: dict[str, Any] = {"round": cur["round"], "against": prev["round"],
                                 "acceptance": _paired(prev, cur, _accepted, seed, min_items), "metrics": {}}
        names = sorted({m for i in cur["items"] for m in i["metrics"]})
        for m in names:
            entry["metrics"][m] = _paired(prev, cur, lambda i, m=m: i["metrics"].get(m), seed, min_items)
        comparisons.append(entry)
    acceptance_ci = {str(res["round"]): bootstrap_ci([_accepted(i) for i in res["items"]], seed=seed)
                     for res in results}
    return {"target": target, "rounds": rounds, "acceptance_ci95": acceptance_ci, "comparisons": comparisons,
            "rejection_reasons": reasons, "min_eval_items": min_items}


# --- html -----------------------------------------------------------------------------------------


_SVG_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _svg_open(title: str, width: int, height: int) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(title)}">',
            f'<text x="4" y="12" font-size="11">{html.escape(title)}</text>']


def _interval_plot(title: str, xs: list[int], means: list[float | None], cis: list[list[float]], *,
                   width: int = 300, height: int = 180) -> str:
    """Means with their 95% intervals per round, as an inline SVG (no plotting library)."""
    pad_l, pad_r, pad_t, pad_b = 40, 10, 20, 22
    pts = [(x, m, c) for x, m, c in zip(xs, means, cis, strict=True)
           if m is not None and c is not None and not any(math.isnan(v) for v in (m, *c))]
    lows = [min(m, c[0]) for _, m, c in pts]
    highs = [max(m, c[1]) for _, m, c in pts]
    lo, hi = (min(lows), max(highs)) if pts else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = (min(xs), max(xs)) if xs else (0, 1)
    span = (x1 - x0) or 1
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x: float) -> float:  # the rounds kept clear of the axes
        inner = plot_w - 24
        return pad_l + 12 + ((x - x0) / span * inner if x1 > x0 else inner / 2)

    def py(v: float) -> float:
        return pad_t + (hi - v) / (hi - lo) * plot_h

    parts = _svg_open(title, width, height)
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#000"/>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + plot_h}" stroke="#000"/>')
    parts.append(f'<text x="{pad_l - 3}" y="{pad_t + 4}" font-size="9" text-anchor="end">{hi:.3g}</text>')
    parts.append(f'<text x="{pad_l - 3}" y="{pad_t + plot_h}" font-size="9" text-anchor="end">{lo:.3g}</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{height - 8}" font-size="9" text-anchor="middle">{x}</text>')
    parts.append(f'<text x="{pad_l + plot_w:.1f}" y="{height - 1}" font-size="9" text-anchor="end">round</text>')
    if len(pts) > 1:
        path = " ".join(f"{px(x):.1f},{py(m):.1f}" for x, m, _ in pts)
        parts.append(f'<polyline class="means" points="{path}" fill="none" stroke="{_SVG_COLOURS[0]}"/>')
    for x, m, (c_lo, c_hi) in pts:
        parts.append(f'<line class="interval" x1="{px(x):.1f}" y1="{py(c_lo):.1f}" x2="{px(x):.1f}" '
                     f'y2="{py(c_hi):.1f}" stroke="{_SVG_COLOURS[0]}"/>')
        parts.append(f'<circle class="mean" cx="{px(x):.1f}" cy="{py(m):.1f}" r="3" fill="{_SVG_COLOURS[0]}">'
                     f'<title>round {x}: {m:.4g} (95% interval {c_lo:.4g} to {c_hi:.4g})</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _reasons_plot(reasons: dict[str, dict[str, int]], *, width: int = 300, height: int = 180) -> str:
    """Rejection reasons per round, stacked bars, as an inline SVG with a legend."""
    pad_l, pad_t, pad_b = 30, 20, 22
    rounds = sorted(reasons, key=int)
    codes = sorted({c for r in rounds for c in reasons[r]})
    legend_w = 110 if codes else 0
    plot_w, plot_h = width - pad_l - legend_w - 10, height - pad_t - pad_b
    top = max((sum(reasons[r].values()) for r in rounds), default=0) or 1
    bar_w = plot_w / max(len(rounds), 1)
    parts = _svg_open("rejection reasons", width, height)
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#000"/>')
    parts.append(f'<text x="{pad_l - 3}" y="{pad_t + 4}" font-size="9" text-anchor="end">{top}</text>')
    for k, r in enumerate(rounds):
        y = float(pad_t + plot_h)
        for j, code in enumerate(codes):
            n = reasons[r].get(code, 0)
            if not n:
                continue
            h = n / top * plot_h
            y -= h
            parts.append(f'<rect x="{pad_l + k * bar_w + 2:.1f}" y="{y:.1f}" width="{max(bar_w - 4, 1):.1f}" '
                         f'height="{h:.1f}" fill="{_SVG_COLOURS[j % len(_SVG_COLOURS)]}">'
                         f'<title>round {r}: {html.escape(code)} {n}</title></rect>')
        parts.append(f'<text x="{pad_l + (k + 0.5) * bar_w:.1f}" y="{height - 8}" font-size="9" '
                     f'text-anchor="middle">{r}</text>')
    for j, code in enumerate(codes):
        y = pad_t + 12 * j
        parts.append(f'<rect x="{width - legend_w}" y="{y}" width="8" height="8" '
                     f'fill="{_SVG_COLOURS[j % len(_SVG_COLOURS)]}"/>')
        parts.append(f'<text x="{width - legend_w + 11}" y="{y + 8}" font-size="9">{html.escape(code)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def figure(name: str, svg: str) -> str:
    """One chart of a report page, with its caption."""
    return f'<figure class="plot">{svg}<figcaption>{html.escape(name)}</figcaption></figure>'


def _strip(results: list[dict[str, Any]], storage: Storage, thumb: int = 96) -> str:
    """The held-out items (rows) across rounds (columns), as one PNG."""
    from PIL import Image

    n_items = len(results[0]["items"]) if results else 0
    sheet = Image.new("RGB", (thumb * len(results), thumb * n_items), "white")
    for c, res in enumerate(results):
        for r, item in enumerate(res["items"]):
            if not item["image_uri"]:
                continue
            with Image.open(io.BytesIO(storage.get(item["image_uri"]))) as im:
                sheet.paste(im.convert("RGB").resize((thumb, thumb)), (c * thumb, r * thumb))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _words(entry: dict[str, Any] | None, what: str) -> str:
    if entry is None:
        return f"{what}: no paired values"
    lo, hi = entry["ci95"]
    return (f"{what}: {entry['diff']:+.4f} (95% interval {lo:+.4f} to {hi:+.4f}, {entry['pairs']} items) — "
            f"{entry['verdict']}")


def write_report(out_dir: Path, report: dict[str, Any], results: list[dict[str, Any]], storage: Storage,
                 state: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2))
    rounds = report["rounds"]
    xs = [r["round"] for r in rounds]
    plots = [("acceptance", _interval_plot("acceptance (bootstrap 95%)", xs, [r["acceptance"] for r in rounds],
                                           [report["acceptance_ci95"][str(x)] for x in xs]))]
    for m in sorted({m for r in rounds for m in r["metrics"]}):
        means = [r["metrics"].get(m, {}).get("mean") for r in rounds]
        cis = [r["metrics"].get(m, {}).get("ci95", [0, 0]) for r in rounds]
        plots.append((m, _interval_plot(m, xs, means, cis)))
    plots.append(("rejection reasons", _reasons_plot(report["rejection_reasons"])))
    lines = []
    for comp in report["comparisons"]:
        lines.append(f"<li>round {comp['round']} vs {comp['against']}: "
                     f"{html.escape(_words(comp['acceptance'], 'acceptance'))}<ul>"
                     + "".join(f"<li>{html.escape(_words(v, m))}</li>" for m, v in comp["metrics"].items())
                     + "</ul></li>")
    rows = "".join(f"<tr><td>{r['round']}</td><td>{r['adapter'] if r['adapter'] is not None else 'base'}</td>"
                   f"<td>{r['eval_edits']}</td><td>{r['accepted']}</td><td>{r['acceptance']:.3f}</td></tr>"
                   for r in rounds)
    figures = "".join(figure(name, svg) for name, svg in plots)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>synthpipe flywheel: {report['target']}</title>
<style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:0.5em}}
td,th{{padding:0.2em 0.8em;text-align:right}}</style></head><body>
<h1>Flywheel report: {html.escape(report['target'])}</h1>
<p>{len(state['eval_item_sets'])} held-out item sets (never trained on), remade every round with the same seeds.
Intervals are bootstrap 95% intervals over the held-out items. A round is called better or worse only
with at least {report.get('min_eval_items', 1)} paired items (fewer: not enough evidence, train.min_eval_items),
a paired difference whose interval excludes zero, and the two rounds' intervals apart; else it is within noise.</p>
<table><tr><th>round</th><th>adapter</th><th>eval edits</th><th>accepted</th><th>acceptance</th></tr>{rows}</table>
<h2>Is each round better than the one before?</h2><ul>{''.join(lines) or '<li>only one round</li>'}</ul>
<h2>Plots</h2>{figures}
<h2>The same held-out items across rounds</h2>
<p>rows: held-out item sets; columns: rounds {', '.join(map(str, xs))}</p>
<img alt="held-out items across rounds" src="data:image/png;base64,{_strip(results, storage)}">
</body></html>
"""
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return json_path, html_path
