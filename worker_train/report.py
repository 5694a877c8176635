"""The flywheel's report: ``report.json`` (per round: acceptance and metrics with bootstrap 95%
intervals; round-to-round comparisons) and ``report.html`` (plots made offline with matplotlib,
embedded as PNG, and a strip of the same held-out items across rounds).

Intervals are percentile bootstraps over the held-out items (2000 resamples, fixed seed).
Comparisons are paired, since every round remakes the same items with the same seeds: a
difference whose interval holds zero is reported as within noise.
"""

from __future__ import annotations

import base64
import html
import io
import json
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


def _paired(prev: dict[str, Any], cur: dict[str, Any], value: Any, seed: int) -> dict[str, Any] | None:
    before = {i["item_set_id"]: value(i) for i in prev["items"]}
    diffs = [value(i) - before[i["item_set_id"]] for i in cur["items"]
             if value(i) is not None and before.get(i["item_set_id"]) is not None]
    if not diffs:
        return None
    lo, hi = bootstrap_ci(diffs, seed=seed)
    mean = sum(diffs) / len(diffs)
    within = lo <= 0 <= hi
    verdict = "within noise" if within else ("better" if mean > 0 else "worse")
    return {"diff": round(mean, 6), "ci95": [lo, hi], "pairs": len(diffs), "within_noise": within, "verdict": verdict}


def build_report(target: str, results: list[dict[str, Any]], eval_sets: int, *, seed: int) -> dict[str, Any]:
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
                                 "acceptance": _paired(prev, cur, _accepted, seed), "metrics": {}}
        names = sorted({m for i in cur["items"] for m in i["metrics"]})
        for m in names:
            entry["metrics"][m] = _paired(prev, cur, lambda i, m=m: i["metrics"].get(m), seed)
        comparisons.append(entry)
    acceptance_ci = {str(res["round"]): bootstrap_ci([_accepted(i) for i in res["items"]], seed=seed)
                     for res in results}
    return {"target": target, "rounds": rounds, "acceptance_ci95": acceptance_ci, "comparisons": comparisons,
            "rejection_reasons": reasons}


# --- html -----------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _interval_plot(title: str, xs: list[int], means: list[float | None], cis: list[list[float]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    pts = [(x, m, c) for x, m, c in zip(xs, means, cis, strict=True) if m is not None]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                    yerr=[[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]], fmt="o-", capsize=4)
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _reasons_plot(reasons: dict[str, dict[str, int]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    rounds = sorted(reasons, key=int)
    codes = sorted({c for r in rounds for c in reasons[r]})
    bottom = [0] * len(rounds)
    for code in codes:
        heights = [reasons[r].get(code, 0) for r in rounds]
        ax.bar(rounds, heights, bottom=bottom, label=code)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if codes:
        ax.legend(fontsize=7)
    ax.set_xlabel("round")
    ax.set_title("rejection reasons", fontsize=10)
    return _png(fig)


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
    figures = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, data in plots)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>synthpipe flywheel: {report['target']}</title>
<style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:0.5em}}
td,th{{padding:0.2em 0.8em;text-align:right}}</style></head><body>
<h1>Flywheel report: {html.escape(report['target'])}</h1>
<p>{len(state['eval_item_sets'])} held-out item sets (never trained on), remade every round with the same seeds.
Intervals are bootstrap 95% intervals over the held-out items; a round-to-round difference whose
interval holds zero is within noise.</p>
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
