"""An HTML contact sheet of before/after pairs that opens offline (thumbnails are inlined)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image

from common.storage import Storage

THUMB = 192
MAX_ROWS = 500

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>synthpipe contact sheet</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }}
.stats {{ color: #555; margin-bottom: 16px; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 16px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px; }}
.pair {{ display: flex; gap: 6px; align-items: flex-start; flex-wrap: wrap; }}
figure {{ margin: 0; text-align: center; font-size: 11px; color: #666; }}
img {{ height: {thumb}px; width: auto; max-width: {thumb}px; object-fit: contain; display: block;
       border-radius: 4px; image-rendering: auto; background: #eee; }}
.garment img {{ height: 80px; max-width: 80px; }}
.prompt {{ margin-top: 8px; }}
.meta {{ color: #777; font-size: 12px; }}
</style></head><body>
<h1>synthpipe contact sheet</h1>
<div class="stats">{stats}</div>
<div class="grid">
{cards}
</div></body></html>
"""


def _thumb(storage: Storage, uri: str, side: int = THUMB) -> str:
    im = Image.open(io.BytesIO(storage.get(uri))).convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(src: str, caption: str, cls: str = "") -> str:
    return f'<figure class="{cls}"><img src="{src}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def write_contact_sheet(storage: Storage, path: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    cards = []
    for row in rows[:MAX_ROWS]:
        figs = [_figure(_thumb(storage, row["input_uri"]), "before"),
                _figure(_thumb(storage, row["edited_uri"]), "after")]
        figs += [_figure(_thumb(storage, u, 80), "garment", "garment") for u in row["garment_uris"]]
        site = next((s for s in row["sites"] if s), "local")
        cards.append(
            f'<div class="card"><div class="pair">{"".join(figs)}</div>'
            f'<div class="prompt">{html.escape(row["edit_prompt"])}</div>'
            f'<div class="meta">{html.escape(row["recipe"])} · confidence {row["confidence"]:.2f} · '
            f'{html.escape(row["feasibility"])} · seed {row["seed"]} · {html.escape(site)} · '
            f'{html.escape(row["edit_backend"])}</div></div>'
        )
    jobs = summary.get("jobs", {})
    stats = " · ".join(
        f"{stage}: " + ", ".join(f"{k} {v}" for k, v in by.items() if v) for stage, by in jobs.items()
        if any(by.values())
    )
    more = f" · showing {MAX_ROWS} of {len(rows)}" if len(rows) > MAX_ROWS else ""
    body = PAGE.format(thumb=THUMB, stats=html.escape(f"{len(rows)} edits · {stats}{more}"),
                       cards="\n".join(cards) or "<p>No edits yet.</p>")
    path.write_text(body)
    return path
