"""Taking an adapter away: ``synthpipe adapters export ID OUT``.

Writes one stored adapter as a folder its library's own loader opens — diffusers'
``pipe.load_lora_weights(OUT)`` for the edit, edit-plus and character LoRAs, PEFT's
``PeftModel.from_pretrained(base, OUT)`` for the VL LoRA — with a model card (``README.md``: a
YAML header Hugging Face reads, then what the adapter is, what it was trained on, its loss curve
and how to load it) and the loss curve as ``loss.png``. The folder is claimed the way dataset
exports claim theirs (``common.dataset.outfolder``): a new or empty folder, or one an earlier
export wrote; nothing else in it is written over.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from common.core.errors import InputError
from common.dataset.outfolder import claim_folder
from common.domain.adapters import CONFIG_NAME, WEIGHTS_NAME
from common.store.rows import Adapter
from common.store.storage import Storage

CARD_NAME = "README.md"
LOSS_PLOT = "loss.png"

#: per target: the library that loads it, the model card's tags and the loading snippet
_HOW: dict[str, dict[str, Any]] = {
    "edit": {"library": "diffusers", "tags": ["instruct-pix2pix", "image-to-image"],
             "what": "a LoRA of the InstructPix2Pix UNet",
             "pipeline": "StableDiffusionInstructPix2PixPipeline"},
    "edit-plus": {"library": "diffusers", "tags": ["qwen-image-edit", "image-to-image"],
                  "what": "a LoRA of the Qwen-Image-Edit Plus transformer",
                  "pipeline": "QwenImageEditPlusPipeline"},
    "character": {"library": "diffusers", "tags": ["flux", "text-to-image"],
                  "what": "a FLUX transformer LoRA of one character",
                  "pipeline": "FluxPipeline"},
    "vl": {"library": "peft", "tags": ["qwen2.5-vl", "image-text-to-text"],
           "what": "a LoRA of the Qwen2.5-VL language model", "pipeline": None},
}


def export_adapter(session: Session, storage: Storage, adapter_id: int, out_dir: Path) -> dict[str, Any]:
    """Write adapter ``adapter_id`` into ``out_dir`` as a loadable folder with its model card;
    returns what was written. A missing adapter, or a folder someone else's files are in, is an
    ``InputError`` naming it."""
    row = session.get(Adapter, adapter_id)
    if row is None:
        raise InputError(f"adapter {adapter_id} does not exist (see synthpipe adapters list)",
                         code="adapters.not_found")
    how = _HOW[row.target]
    weights = storage.get(row.weights_uri)
    if hashlib.sha256(weights).hexdigest() != row.sha256:
        raise InputError(f"adapter {adapter_id}: the stored weights at {row.weights_uri} do not match their "
                         f"sha256 {row.sha256}", code="adapters.corrupt")
    config = storage.get(row.config_uri)
    losses = [(int(step), float(loss)) for step, loss in row.loss_curve]
    files = [WEIGHTS_NAME[row.target], CONFIG_NAME, CARD_NAME] + ([LOSS_PLOT] if losses else [])
    owned = claim_folder(out_dir, files, kind="adapter", adapter_id=row.id, sha256=row.sha256)
    (out_dir / WEIGHTS_NAME[row.target]).write_bytes(weights)
    (out_dir / CONFIG_NAME).write_bytes(config)
    if losses:
        (out_dir / LOSS_PLOT).write_bytes(loss_png(losses))
    (out_dir / CARD_NAME).write_text(model_card(row, how, losses), encoding="utf-8")
    owned.finish()
    return {"adapter_id": row.id, "target": row.target, "library": how["library"], "sha256": row.sha256,
            "out": str(out_dir), "files": files}


def _yaml_text(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a valid YAML scalar, quoted and escaped


def model_card(row: Adapter, how: dict[str, Any], losses: list[tuple[int, float]]) -> str:
    """The ``README.md`` of an exported adapter: YAML header, then the facts and how to load it."""
    hp = row.hyperparameters or {}
    tags = ["lora", "synthpipe", *how["tags"]]
    header = ["---", f"base_model: {_yaml_text(row.base_model)}", f"library_name: {how['library']}", "tags:",
              *(f"- {t}" for t in tags), "---", ""]
    first = f"{losses[0][1]:.4f}" if losses else "-"
    last = f"{losses[-1][1]:.4f}" if losses else "-"
    facts = [
        ("target", row.target), ("adapter id", str(row.id)), ("weights sha256", row.sha256),
        ("snapshot", f"{row.snapshot_id} (sha256 {row.snapshot_sha256})"),
        ("flywheel round", "-" if row.round is None else str(row.round)), ("steps", str(row.steps)),
        ("rank", str(hp.get("rank", "-"))), ("learning rate", str(hp.get("lr", "-"))),
        ("resolution", str(hp.get("resolution", "-"))), ("train seconds", f"{row.train_seconds:.1f}"),
        ("loss (first -> last step)", f"{first} -> {last}"),
    ]
    body = [f"# synthpipe {row.target} adapter {row.id}", "",
            f"{how['what'].capitalize()} of `{row.base_model}`, trained by synthpipe on the accepted edits "
            f"of snapshot {row.snapshot_id}. The snapshot hash names exactly the edits it saw.", "",
            "| | |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in facts), "", "## Loss curve", ""]
    if losses:  # the plot is written beside the card whenever there are losses
        body += [f"![training loss per step]({LOSS_PLOT})", ""]
    body += _loss_table(losses) + ["", "## How to load it", "", "```python", *_snippet(row, how), "```", ""]
    return "\n".join(header + body)


def _loss_table(losses: list[tuple[int, float]], rows: int = 10) -> list[str]:
    """The recorded losses at up to ``rows`` evenly spaced steps (always the first and last)."""
    if not losses:
        return ["No losses were recorded."]
    picks = sorted({round(i * (len(losses) - 1) / max(rows - 1, 1)) for i in range(min(rows, len(losses)))})
    return ["| step | loss |", "|---:|---:|", *(f"| {losses[i][0]} | {losses[i][1]:.4f} |" for i in picks)]


def _snippet(row: Adapter, how: dict[str, Any]) -> list[str]:
    if how["library"] == "peft":
        return ["from peft import PeftModel",
                "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
                f"base = AutoModelForImageTextToText.from_pretrained({row.base_model!r})",
                f"processor = AutoProcessor.from_pretrained({row.base_model!r})",
                'model = PeftModel.from_pretrained(base, "OUT")  # this folder']
    return [f"from diffusers import {how['pipeline']}", "",
            f"pipe = {how['pipeline']}.from_pretrained({row.base_model!r})",
            'pipe.load_lora_weights("OUT")  # this folder']


def loss_png(losses: list[tuple[int, float]], width: int = 360, height: int = 180) -> bytes:
    """The loss per step as a small line chart (PIL only, so no plotting library is needed)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 52, width - 10, 10, height - 24
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    lo, hi = min(values), max(values)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = min(steps), max(steps)
    span = (s1 - s0) or 1

    def xy(step: int, value: float) -> tuple[float, float]:
        return (left + (step - s0) / span * (right - left), bottom - (value - lo) / (hi - lo) * (bottom - top))

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    points = [xy(s, v) for s, v in losses]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=2)
    else:
        x, y = points[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(31, 119, 180))
    draw.text((2, top), f"{hi:.3g}", fill="black")
    draw.text((2, bottom - 10), f"{lo:.3g}", fill="black")
    draw.text((left, bottom + 6), f"step {s0}", fill="black")
    draw.text((right - 60, bottom + 6), f"step {s1}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
