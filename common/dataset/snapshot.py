"""``synthpipe export OUT_DIR --snapshot ID``: exactly the data one train job read.

Two layouts of the same examples, in snapshot order:

- ``OUT_DIR/imagefolder/train/``: the imagefolder diffusers' InstructPix2Pix scripts read
  (``metadata.jsonl`` with ``input_image``/``edited_image`` via ``*_file_name`` keys and
  ``edit_prompt``; ``datasets.load_dataset("OUT_DIR/imagefolder")`` loads it, and
  ``--train_data_dir OUT_DIR/imagefolder`` points the scripts at it);
- ``OUT_DIR/ai-toolkit/``: ai-toolkit's edit-LoRA layout for Qwen-Image-Edit and Kontext:
  ``target/<name>.<ext>`` (the edited image) with ``target/<name>.txt`` (the instruction),
  ``control/<name>.<ext>`` (the input photo) and ``control_2/``, ``control_3/``, … (every garment
  photo of the set), every file of one example sharing its stem.

Images are the stored bytes, never re-encoded, so an edit has the same hash here as in the main
export (``export --format ai-toolkit`` writes the per-recipe layout with a job config).

``OUT_DIR/snapshot.json`` names the snapshot (id, hash, edit ids). The folder rules are
export's (:mod:`common.dataset.outfolder`): new, empty, or written by an earlier export, which
owns only the files and folders it listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from common.core.errors import InputError
from common.dataset.card import CARD, CardConfig, Tally, write_card
from common.dataset.outfolder import claim_folder
from common.dataset.writers import _extension
from common.domain.itemsets import read_item_set
from common.store.db import Database
from common.store.rows import Analysis, Asset, Edit, Snapshot
from common.store.storage import Storage


def _copy(storage: Storage, uri: str, path: Path) -> None:
    """The stored bytes, as they are (never re-encoded: the same hashes as every other export)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(storage.get(uri))


def export_snapshot(db: Database, storage: Storage, snapshot_id: int, out_dir: Path) -> dict[str, Any]:
    """Write snapshot ``snapshot_id``'s examples in both layouts; returns what was written."""
    with db.session() as s:
        snap = s.get(Snapshot, snapshot_id)
        if snap is None:
            raise InputError(f"snapshot {snapshot_id} does not exist (synthpipe adapters list shows the snapshot "
                             "of each adapter)", code="export.no_snapshot")
        edits = {e.id: e for e in s.scalars(select(Edit).where(Edit.id.in_(snap.edit_ids)))}
        rows = []
        tally = Tally()
        for eid in snap.edit_ids:
            e = edits.get(eid)
            analysis = s.get(Analysis, e.analysis_id) if e is not None and e.analysis_id is not None else None
            prompt = (e.edit_prompt if e is not None else None) or (analysis.edit_prompt if analysis else None)
            if e is None or not prompt:
                continue
            view = read_item_set(s, e.item_set_id)
            rows.append((eid, e.output_uri, prompt, [m.uri for m in view.members]))
            assets = [s.get(Asset, m.asset_id) for m in view.members]
            tally.add({"recipe": view.recipe, "decision": "snapshot", "licences": [a.licence or "" for a in assets if a],
                       "sites": [a.site or "" for a in assets if a]})
        info = {"snapshot_id": snap.id, "sha256": snap.sha256, "target": snap.target, "edit_ids": list(snap.edit_ids)}
    owned = claim_folder(out_dir, _files(rows), format="snapshot", decision="snapshot")  # export's folder rules
    train, kit = out_dir / "imagefolder" / "train", out_dir / "ai-toolkit"
    train.mkdir(parents=True, exist_ok=True)
    lines = []
    for eid, edited, prompt, members in rows:
        name = _name(eid)
        _copy(storage, members[0], train / f"{name}-input.{_extension(members[0])}")
        _copy(storage, edited, train / f"{name}-edited.{_extension(edited)}")
        lines.append(json.dumps({"input_image_file_name": f"{name}-input.{_extension(members[0])}",
                                 "edited_image_file_name": f"{name}-edited.{_extension(edited)}",
                                 "edit_prompt": prompt, "edit_id": eid}))
        _copy(storage, edited, kit / "target" / f"{name}.{_extension(edited)}")
        (kit / "target" / f"{name}.txt").write_text(prompt + "\n", encoding="utf-8")
        for k, uri in enumerate(members):  # the person and every garment
            _copy(storage, uri, kit / _control(k) / f"{name}.{_extension(uri)}")
    (train / "metadata.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    (out_dir / "snapshot.json").write_text(json.dumps(info, indent=2))
    write_card(out_dir / CARD, layout="snapshot", tally=tally, rows=len(rows), configs=[CardConfig(
        "default", "imagefolder/train/**", len(rows), _features(), inferred=True)],
        selection=f"train snapshot {info['snapshot_id']} (sha256 {info['sha256']}, target {info['target']})")
    owned.finish()
    return {"out_dir": str(out_dir), "snapshot_id": info["snapshot_id"], "sha256": info["sha256"], "rows": len(rows)}


def _name(edit_id: int) -> str:
    return f"edit-{edit_id:08d}"


def _control(k: int) -> str:
    """The ai-toolkit folder of a set's ``k``-th photo: the person, then the garments."""
    return "control" if k == 0 else f"control_{k + 1}"


def _features() -> Any:
    from datasets import Features, Image, Value

    return Features({"input_image": Image(), "edited_image": Image(), "edit_prompt": Value("string"),
                     "edit_id": Value("int64")})


def _files(rows: list[tuple[int, str, str, list[str]]]) -> list[str]:
    """Every file :func:`export_snapshot` writes for ``rows``, relative to the export folder."""
    files = ["imagefolder/train/metadata.jsonl", "snapshot.json", CARD]
    for eid, edited, _, members in rows:
        name = _name(eid)
        files += [f"imagefolder/train/{name}-input.{_extension(members[0])}",
                  f"imagefolder/train/{name}-edited.{_extension(edited)}",
                  f"ai-toolkit/target/{name}.{_extension(edited)}", f"ai-toolkit/target/{name}.txt"]
        files += [f"ai-toolkit/{_control(k)}/{name}.{_extension(uri)}" for k, uri in enumerate(members)]
    return files
