"""``synthpipe export OUT_DIR --snapshot ID``: exactly the data one train job read.

Two layouts of the same examples, in snapshot order:

- ``OUT_DIR/imagefolder/train/``: the imagefolder diffusers' InstructPix2Pix scripts read
  (``metadata.jsonl`` with ``input_image``/``edited_image`` via ``*_file_name`` keys and
  ``edit_prompt``; ``datasets.load_dataset("OUT_DIR/imagefolder")`` loads it, and
  ``--train_data_dir OUT_DIR/imagefolder`` points the scripts at it);
- ``OUT_DIR/ai-toolkit/``: ai-toolkit's edit-LoRA layout for Qwen-Image-Edit and Kontext:
  ``target/<name>.png`` (the edited image) with ``target/<name>.txt`` (the instruction),
  ``control/<name>.png`` (the input photo) and ``control_2/``, ``control_3/`` (garment photos,
  where the set has them), every file of one example sharing its name.

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
from common.dataset.outfolder import claim_folder
from common.domain.itemsets import read_item_set
from common.store.db import Database
from common.store.rows import Analysis, Edit, Snapshot
from common.store.storage import Storage


def _png(storage: Storage, uri: str, path: Path) -> None:
    import io

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(storage.get(uri))) as im:
        im.convert("RGB").save(path, format="PNG")


def export_snapshot(db: Database, storage: Storage, snapshot_id: int, out_dir: Path) -> dict[str, Any]:
    """Write snapshot ``snapshot_id``'s examples in both layouts; returns what was written."""
    with db.session() as s:
        snap = s.get(Snapshot, snapshot_id)
        if snap is None:
            raise InputError(f"snapshot {snapshot_id} does not exist (synthpipe adapters list shows the snapshot "
                             "of each adapter)", code="export.no_snapshot")
        edits = {e.id: e for e in s.scalars(select(Edit).where(Edit.id.in_(snap.edit_ids)))}
        rows = []
        for eid in snap.edit_ids:
            e = edits.get(eid)
            analysis = s.get(Analysis, e.analysis_id) if e is not None and e.analysis_id is not None else None
            prompt = (e.edit_prompt if e is not None else None) or (analysis.edit_prompt if analysis else None)
            if e is None or not prompt:
                continue
            view = read_item_set(s, e.item_set_id)
            rows.append((eid, e.output_uri, prompt, [m.uri for m in view.members]))
        info = {"snapshot_id": snap.id, "sha256": snap.sha256, "target": snap.target, "edit_ids": list(snap.edit_ids)}
    owned = claim_folder(out_dir, _files(rows), format="snapshot", decision="snapshot")  # export's folder rules
    train, kit = out_dir / "imagefolder" / "train", out_dir / "ai-toolkit"
    train.mkdir(parents=True, exist_ok=True)
    lines = []
    for eid, edited, prompt, members in rows:
        name = _name(eid)
        _png(storage, members[0], train / f"{name}-input.png")
        _png(storage, edited, train / f"{name}-edited.png")
        lines.append(json.dumps({"input_image_file_name": f"{name}-input.png",
                                 "edited_image_file_name": f"{name}-edited.png", "edit_prompt": prompt,
                                 "edit_id": eid}))
        _png(storage, edited, kit / "target" / f"{name}.png")
        (kit / "target" / f"{name}.txt").write_text(prompt + "\n", encoding="utf-8")
        for k, uri in enumerate(members[:3]):
            _png(storage, uri, kit / _control(k) / f"{name}.png")
    (train / "metadata.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    (out_dir / "snapshot.json").write_text(json.dumps(info, indent=2))
    owned.finish()
    return {"out_dir": str(out_dir), "snapshot_id": info["snapshot_id"], "sha256": info["sha256"], "rows": len(rows)}


def _name(edit_id: int) -> str:
    return f"edit-{edit_id:08d}"


def _control(k: int) -> str:
    """The ai-toolkit folder of a set's ``k``-th photo: the person, then the garments."""
    return "control" if k == 0 else f"control_{k + 1}"


def _files(rows: list[tuple[int, str, str, list[str]]]) -> list[str]:
    """Every file :func:`export_snapshot` writes for ``rows``, relative to the export folder."""
    files = ["imagefolder/train/metadata.jsonl", "snapshot.json"]
    for eid, _, _, members in rows:
        name = _name(eid)
        files += [f"imagefolder/train/{name}-input.png", f"imagefolder/train/{name}-edited.png",
                  f"ai-toolkit/target/{name}.png", f"ai-toolkit/target/{name}.txt"]
        files += [f"ai-toolkit/{_control(k)}/{name}.png" for k in range(len(members[:3]))]
    return files
