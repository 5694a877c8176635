"""The character flywheel: enrich a character photo, train its LoRA, generate, score, retrain.

Round 1 makes the enrich sets of the photo (VL -> edit -> score), trains a character LoRA on
the photo and its accepted images, generates N images with it and scores their identity
against the photo. Every later round retrains on what is accepted by then (enrich edits and
the generated images of earlier rounds) and generates again with the same seeds. ``DIR/
flywheel.json`` holds the run's id, seed and each round's train and generate job keys, so a
rerun with the same folder queues nothing twice and goes on where the last one stopped.

The report gives per round the identity kept (share of generated images whose dlib distance to
the photo is below ``score.enrich.identity_max``; the plan asks >= 70 %), the diversity (mean
pairwise DINOv2 cosine distance among the accepted generated images, and among all of them),
judge scores when the judge ran, a strip of the images, and each round against the one before
(paired by seed) with bootstrap 95% intervals.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import secrets
from itertools import combinations
from pathlib import Path
from typing import Any

from sqlalchemy import select

from common.core.errors import InputError
from common.domain.characters import resolve_character
from common.runtime.runner import StageContext
from common.store.rows import Adapter, Edit, ItemSetAsset, Job, Score
from worker_train.flywheel import FlywheelError, _settle
from worker_train.report import (
    _interval_plot,
    _strip,
    _summary,
    bootstrap_ci,
    figure,
    paired_verdict,
)

log = logging.getLogger(__name__)

STATE_FILE = "flywheel.json"
TARGET = "character"
#: the plan's criterion: the character recognisable in at least this share of the images
IDENTITY_KEPT_GOAL = 0.7


def _load_state(out_dir: Path, asset_id: int, n: int) -> dict[str, Any]:
    path = out_dir / STATE_FILE
    if path.is_file():
        state = dict(json.loads(path.read_text()))
        if state.get("target") != TARGET or state.get("character_asset_id") != asset_id or state.get("n") != n:
            raise InputError(f"{out_dir} holds another flywheel run (target {state.get('target')}, character "
                             f"{state.get('character_asset_id')}, n {state.get('n')}); use another --out")
        return state
    state = {"run": secrets.token_hex(6), "target": TARGET, "character_asset_id": asset_id, "n": n,
             "seed": secrets.randbelow(2**31), "rounds": {}}
    _save(out_dir, state)
    return state


def _save(out_dir: Path, state: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


def _enrich(ctx: StageContext, asset_id: int, timeout_s: float) -> None:
    """The enrich sets of the photo, through VL -> edit -> score (made once: the sets' keys are fixed)."""
    from common.domain.pairing import pair_enrich

    with ctx.db.session() as s:
        pair_enrich(s, ctx.settings, limit=None, seed=0, characters=[asset_id])
        sets = list(s.scalars(select(ItemSetAsset.item_set_id).where(ItemSetAsset.asset_id == asset_id,
                                                                     ItemSetAsset.position == 0)))
        keys = list(s.scalars(select(Job.key).where(Job.stage == "vl", Job.item_set_id.in_(sets))))
    _settle(ctx, ["vl", "edit", "score"], keys, timeout_s)


def _train(ctx: StageContext, out_dir: Path, state: dict[str, Any], r: int, overrides: dict[str, Any],
           timeout_s: float) -> int:
    from worker_train.trainers.character_lora import queue_character_train

    rnd = state["rounds"].setdefault(str(r), {})
    if "train_key" not in rnd:  # frozen once: a rerun must not retrain on what later rounds accepted
        with ctx.db.session() as s:
            chosen = {"seed": ctx.settings.train.seed + r, **{k: v for k, v in overrides.items() if v is not None}}
            _, key, snap = queue_character_train(s, ctx.settings, str(state["character_asset_id"]), round_=r, **chosen)
            rnd.update(train_key=key, snapshot_id=snap.id, snapshot_size=snap.size)
        _save(out_dir, state)
    log.info("character flywheel round %d: training on snapshot %s", r, rnd["snapshot_id"])
    _settle(ctx, ["train"], [rnd["train_key"]], timeout_s)
    with ctx.db.session() as s:
        job = s.scalars(select(Job).where(Job.key == rnd["train_key"])).one()
        adapter = s.scalars(select(Adapter).where(Adapter.job_id == job.id)).first()
        if adapter is None:
            raise FlywheelError(f"round {r}: train job {job.id} ended {job.status} ({job.reason}: "
                                f"{job.error_message}); fix it and `synthpipe jobs retry`, then rerun")
        return int(adapter.id)


def _generate(ctx: StageContext, out_dir: Path, state: dict[str, Any], r: int, adapter_id: int,
              timeout_s: float) -> list[str]:
    from worker_generate.service import queue_generate

    rnd = state["rounds"][str(r)]
    if "generate_keys" not in rnd:
        with ctx.db.session() as s:
            queued = queue_generate(s, ctx.settings, str(state["character_asset_id"]), state["n"],
                                    adapter=str(adapter_id), seed=state["seed"])
        rnd["generate_keys"] = [j["key"] for j in queued["jobs"]]
        _save(out_dir, state)
    _settle(ctx, ["generate", "score"], rnd["generate_keys"], timeout_s)
    return list(rnd["generate_keys"])


def collect_character_round(ctx: StageContext, r: int, adapter_id: int, keys: list[str]) -> dict[str, Any]:
    """Per generated image (in seed order): its edit, decision, identity and other metrics."""
    from common.domain.final_decision import final_decisions

    with ctx.db.session() as s:
        by_key = dict(s.execute(select(Job.key, Edit.id).join(Edit, Edit.job_id == Job.id)
                                .where(Job.key.in_(keys))).all())
        ids = list(by_key.values())
        finals = final_decisions(s, ids) if ids else {}
        metrics: dict[int, dict[str, float]] = {}
        for score in s.scalars(select(Score).where(Score.edit_id.in_(ids))):
            for name, value in (score.metrics or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics.setdefault(score.edit_id, {})[f"{score.scorer}.{name}"] = float(value)
        uris = dict(s.execute(select(Edit.id, Edit.output_uri).where(Edit.id.in_(ids))).all())
        seeds = dict(s.execute(select(Edit.id, Edit.seed).where(Edit.id.in_(ids))).all())
    items = []
    for index, key in enumerate(keys):
        eid = by_key.get(key)
        fd = finals.get(eid) if eid is not None else None
        items.append({"item_set_id": index, "index": index, "key": key, "edit_id": eid,
                      "seed": seeds.get(eid) if eid is not None else None,
                      "decision": fd.decision if fd is not None else None,
                      "metrics": metrics.get(eid, {}) if eid is not None else {},
                      "image_uri": uris.get(eid) if eid is not None else None})
    return {"round": r, "adapter": adapter_id, "items": items}


def _embeddings(ctx: StageContext, uris: list[str]) -> dict[str, Any]:
    """DINOv2 embeddings (the dino scorer's model) of the images at ``uris``."""
    if not uris:
        return {}
    import torch

    from common.core.backends import load_backend
    from common.media.images import load_image

    s = ctx.settings.score
    model = load_backend("scorer", "dino", model=s.dino_model, device=s.device, max_batch=s.batch_size)
    model.load()
    try:
        images = [load_image(ctx.storage.get(u), ctx.settings.images).image.convert("RGB") for u in uris]
        with torch.no_grad():
            emb = torch.nn.functional.normalize(model.embed(images).float(), dim=-1).cpu()
    finally:
        model.unload()
    return {u: emb[i] for i, u in enumerate(uris)}


def _distances(uris: list[str], emb: dict[str, Any]) -> list[float]:
    """1 - cosine of every pair of distinct images."""
    return [round(1.0 - float((emb[a] * emb[b]).sum()), 6) for a, b in combinations(uris, 2)]


def _ci(values: list[float], seed: int) -> list[float] | None:
    """The bootstrap 95% interval of the mean, None without values (report.json stays plain JSON)."""
    return bootstrap_ci(values, seed=seed) if values else None


def _stats(values: list[float], seed: int) -> dict[str, Any]:
    return {"mean": _summary(values, seed)["mean"] if values else None, "ci95": _ci(values, seed)}


def _kept(item: dict[str, Any], limit: float | None) -> float | None:
    if item["edit_id"] is None:
        return None
    d = item["metrics"].get("identity.identity_distance")
    return 1.0 if d is not None and limit is not None and d < limit else 0.0


def build_character_report(ctx: StageContext, state: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    seed, min_items = ctx.settings.train.eval_seed, ctx.settings.train.min_eval_items
    limit = ctx.settings.score.thresholds_for("enrich")["identity_max"]
    all_uris = sorted({i["image_uri"] for res in results for i in res["items"] if i["image_uri"]})
    emb = _embeddings(ctx, all_uris)
    rounds = []
    for res in results:
        items = res["items"]
        made = [i for i in items if i["edit_id"] is not None]
        kept = [k for i in items if (k := _kept(i, limit)) is not None]
        accepted = [i["image_uri"] for i in made if i["decision"] == "accepted"]
        every = [i["image_uri"] for i in made]
        acc_d, all_d = _distances(accepted, emb), _distances(every, emb)
        judge = {m: _stats([i["metrics"][m] for i in made if m in i["metrics"]], seed)
                 for m in sorted({m for i in made for m in i["metrics"] if m.startswith("judge.")})}
        distances = [i["metrics"]["identity.identity_distance"] for i in made
                     if "identity.identity_distance" in i["metrics"]]
        share = round(sum(kept) / len(kept), 6) if kept else None
        rounds.append({
            "round": res["round"], "adapter": res["adapter"], "generated": len(made), "requested": len(items),
            "accepted": len(accepted), "with_face": sum(1 for i in made if i["metrics"].get("identity.faces_edited")),
            "identity_max": limit, "identity_kept": share, "identity_kept_ci95": _ci(kept, seed),
            "identity_kept_goal": IDENTITY_KEPT_GOAL,
            "meets_goal": share is not None and share >= IDENTITY_KEPT_GOAL,
            "identity_distance": _stats(distances, seed),
            "diversity": {**_stats(acc_d, seed),
                          "pairs": len(acc_d), "images": len(accepted)},
            "diversity_all": {**_stats(all_d, seed),
                              "pairs": len(all_d), "images": len(every)},
            "judge": judge or None,
            "images": [{"index": i["index"], "seed": i["seed"], "edit_id": i["edit_id"], "decision": i["decision"],
                        "identity_distance": i["metrics"].get("identity.identity_distance"), "kept": _kept(i, limit)}
                       for i in items],
        })
    comparisons = []
    for prev, cur in zip(rounds, rounds[1:], strict=False):
        comparisons.append({"round": cur["round"], "against": prev["round"],
                            "identity_kept": _paired(prev, cur, "kept", seed, min_items),
                            "identity_distance": _paired(prev, cur, "identity_distance", seed, min_items)})
    return {"target": TARGET, "character_asset_id": state["character_asset_id"], "n": state["n"],
            "seed": state["seed"], "rounds": rounds, "comparisons": comparisons}


def _paired(prev: dict[str, Any], cur: dict[str, Any], field: str, seed: int, min_items: int) -> dict[str, Any] | None:
    """Round ``cur`` minus round ``prev`` per image of the same seed (as the edit flywheel compares
    its rounds); a lower identity distance is better, a higher share kept is."""
    before = {i["index"]: i[field] for i in prev["images"]}
    pairs = [(before[i["index"]], i[field]) for i in cur["images"]
             if i[field] is not None and before.get(i["index"]) is not None]
    return paired_verdict(pairs, seed=seed, min_items=min_items, higher_is_better=field == "kept")


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f} %" if pct else f"{v:.4f}"


def _judge_text(judge: dict[str, Any] | None) -> str:
    return ", ".join(f"{m} {_fmt(v['mean'])}" for m, v in (judge or {}).items()) or "-"


def write_character_report(ctx: StageContext, out_dir: Path, report: dict[str, Any],
                           results: list[dict[str, Any]]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2))
    rounds = report["rounds"]
    xs = [r["round"] for r in rounds]
    plots = [
        ("identity kept", _interval_plot("identity kept (bootstrap 95%)", xs, [r["identity_kept"] for r in rounds],
                                         [r["identity_kept_ci95"] or [0.0, 0.0] for r in rounds])),
        ("diversity (accepted)", _interval_plot("diversity of accepted generated (1 - DINOv2 cosine)", xs,
                                                [r["diversity"]["mean"] for r in rounds],
                                                [r["diversity"]["ci95"] or [0.0, 0.0] for r in rounds])),
        ("diversity (all)", _interval_plot("diversity of all generated (1 - DINOv2 cosine)", xs,
                                           [r["diversity_all"]["mean"] for r in rounds],
                                           [r["diversity_all"]["ci95"] or [0.0, 0.0] for r in rounds])),
    ]
    rows = "".join(
        f"<tr><td>{r['round']}</td><td>{r['adapter']}</td><td>{r['generated']}/{r['requested']}</td>"
        f"<td>{r['accepted']}</td><td>{r['with_face']}</td><td>{_fmt(r['identity_kept'], True)}</td>"
        f"<td>{'yes' if r['meets_goal'] else 'no'}</td><td>{_fmt(r['identity_distance']['mean'])}</td>"
        f"<td>{_fmt(r['diversity']['mean'])}</td><td>{_fmt(r['diversity_all']['mean'])}</td>"
        f"<td>{html.escape(_judge_text(r['judge']))}</td></tr>"
        for r in rounds)
    lines = []
    for c in report["comparisons"]:
        parts = []
        for name in ("identity_kept", "identity_distance"):
            e = c[name]
            parts.append(f"{name}: no paired values" if e is None else
                         f"{name}: {e['diff']:+.4f} (95% interval {e['ci95'][0]:+.4f} to {e['ci95'][1]:+.4f}, "
                         f"{e['pairs']} seeds) — {e['verdict']}")
        lines.append(f"<li>round {c['round']} vs {c['against']}<ul>"
                     + "".join(f"<li>{html.escape(p)}</li>" for p in parts) + "</ul></li>")
    figures = "".join(figure(n, svg) for n, svg in plots)
    photo = _photo(ctx, report["character_asset_id"])
    limit = rounds[0]["identity_max"] if rounds else None
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>synthpipe character flywheel</title>
<style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:0.5em}}
td,th{{padding:0.2em 0.8em;text-align:right}}</style></head><body>
<h1>Character flywheel: asset {report['character_asset_id']}</h1>
<img alt="character photo" width="128" src="data:image/png;base64,{photo}">
<p>{report['n']} images generated per round with the same seeds. Identity kept: share of generated images
whose dlib face distance to the photo is below {_fmt(limit)} (score.enrich.identity_max); the goal is
&ge; {100 * IDENTITY_KEPT_GOAL:.0f} %. Diversity: mean pairwise 1 - DINOv2 cosine among the accepted generated
images (and among all of them). Intervals are bootstrap 95% intervals.</p>
<table><tr><th>round</th><th>adapter</th><th>generated</th><th>accepted</th><th>with a face</th>
<th>identity kept</th><th>&ge; 70 %</th><th>identity distance</th><th>diversity (accepted)</th>
<th>diversity (all)</th><th>judge</th></tr>{rows}</table>
<h2>Is each round better than the one before?</h2><ul>{''.join(lines) or '<li>only one round</li>'}</ul>
<h2>Plots</h2>{figures}
<h2>The generated images across rounds</h2>
<p>rows: seeds; columns: rounds {', '.join(map(str, xs))}</p>
<img alt="generated images across rounds" src="data:image/png;base64,{_strip(results, ctx.storage)}">
</body></html>
"""
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return json_path, html_path


def _photo(ctx: StageContext, asset_id: int) -> str:
    from PIL import Image

    from common.store.rows import Asset

    with ctx.db.session() as s:
        asset = s.get(Asset, asset_id)
        uri = asset.uri if asset is not None else None
    buf = io.BytesIO()
    if uri is not None:
        with Image.open(io.BytesIO(ctx.storage.get(uri))) as im:
            im.convert("RGB").resize((128, 128)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run_character_flywheel(ctx: StageContext, *, character: str, rounds: int, n: int, out_dir: Path,
                           overrides: dict[str, Any] | None = None, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run rounds 1..``rounds`` for the character photo ``character`` and write the report."""
    if rounds < 1 or n < 1:
        raise InputError("--rounds and --n must be at least 1")
    with ctx.db.session() as s:
        asset_id = int(resolve_character(s, character).id)
    state = _load_state(out_dir, asset_id, n)
    _enrich(ctx, asset_id, timeout_s)
    results = []
    for r in range(1, rounds + 1):
        adapter_id = _train(ctx, out_dir, state, r, overrides or {}, timeout_s)
        keys = _generate(ctx, out_dir, state, r, adapter_id, timeout_s)
        results.append(collect_character_round(ctx, r, adapter_id, keys))
        log.info("character flywheel round %d done", r)
    report = build_character_report(ctx, state, results)
    write_character_report(ctx, out_dir, report, results)
    return report
