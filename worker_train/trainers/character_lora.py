"""Character LoRA: DreamBooth-style LoRA of the FLUX transformer on images of one character.

The training set of a character (a stored character photo) is the photo itself plus every
accepted edit whose input is that photo: enrich edits, imported pairs and, from round 2 on, the
accepted images the generate stage made of it (they are edits of origin ``generated`` on the
photo's generate item set). Every example is captioned with the instance prompt around the
trigger token (``a photo of sks person``), so the LoRA ties the character to the token.

The objective is FLUX's rectified flow: for clean latents ``x0`` (VAE mean + std * eps, shifted
and scaled as the VAE config says), noise ``n`` and ``t ~ U(0, 1)``, the transformer sees the
packed ``(1 - t) x0 + t n`` with the text embeddings (and guidance 1.0 when it embeds
guidance) and is trained to predict the velocity ``n - x0``. The frozen parts (VAE, CLIP, T5) run
once per example; only the LoRA weights of the transformer's attention projections train.

The character job goes through the train stage like the edit and VL jobs (same snapshot,
adapter, checkpoint and resume machinery); :func:`queue_character_train` freezes its snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.core.errors import InputError, model_load_error
from common.core.settings import Settings
from common.domain.characters import resolve_character
from common.store import jobs as jobstore
from common.store.rows import Asset, Edit, ItemSetAsset, Snapshot
from worker_train.trainers import loop
from worker_train.trainers.loop import Hyper, TrainResult

log = logging.getLogger(__name__)

TARGET = "character"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
INSTANCE_PROMPT = "a photo of {trigger} person"


@dataclass(frozen=True)
class CharacterExample:
    image: Image.Image
    prompt: str


@dataclass
class _Encoded:
    mean: Any  # latent distribution of the image (1, C, h, w)
    std: Any
    prompt_embeds: Any  # T5 (1, tokens, dim)
    pooled: Any  # CLIP pooled (1, dim)
    text_ids: Any  # (tokens, 3)


# --- the training set ---------------------------------------------------------------------------


def character_edit_ids(session: Session, asset_id: int) -> list[int]:
    """Accepted edits whose input (first photo of the item set) is ``asset_id``, people-accepted
    first (the order of :func:`worker_train.snapshots.accepted_edits`)."""
    from worker_train.snapshots import accepted_edits

    sets = set(session.scalars(select(ItemSetAsset.item_set_id)
                               .where(ItemSetAsset.asset_id == asset_id, ItemSetAsset.position == 0)))
    item_set_of = {int(eid): int(sid) for eid, sid in session.execute(select(Edit.id, Edit.item_set_id))}
    return [eid for eid, _ in accepted_edits(session) if item_set_of.get(eid) in sets]


def freeze_character(session: Session, asset_id: int) -> Snapshot:
    """The snapshot of the character's accepted set now (an existing row when it was frozen
    before). It may be empty: the photo itself is always trained on."""
    ids = character_edit_ids(session, asset_id)
    body = json.dumps({"target": TARGET, "character_asset_id": asset_id, "edit_ids": ids}, separators=(",", ":"))
    sha = hashlib.sha256(body.encode()).hexdigest()
    existing = session.scalars(select(Snapshot).where(Snapshot.sha256 == sha)).first()
    if existing is not None:
        return existing
    generated = set(session.scalars(select(Edit.id).where(Edit.id.in_(ids), Edit.origin == "generated")))
    row = Snapshot(sha256=sha, target=TARGET, edit_ids=ids, size=len(ids),
                   selection={"decisions": "final", "character_asset_id": asset_id,
                              "generated": len(generated), "enriched_or_imported": len(ids) - len(generated)})
    session.add(row)
    session.flush()
    return row


def hyper_for_character(settings: Settings, **overrides: Any) -> Hyper:
    t = settings.train
    hp = Hyper(rank=t.character_rank, lr=t.character_lr, steps=t.character_steps, resolution=t.character_resolution,
               batch_size=t.batch_size, checkpoint_every=t.checkpoint_every, seed=t.seed, conditioning_dropout=0.0,
               gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer, device=t.device, dtype=t.dtype)
    return replace(hp, **{k: v for k, v in overrides.items() if v is not None})


def queue_character_train(session: Session, settings: Settings, character: str, *, base: str | None = None,
                          trigger: str | None = None, round_: int | None = None,
                          **overrides: Any) -> tuple[int | None, str, Snapshot]:
    """Freeze the character's accepted set and queue one train job (target ``character``) for
    it. Returns (new job id or None when the same job exists, its key, the snapshot)."""
    asset = resolve_character(session, character)
    snap = freeze_character(session, asset.id)
    hp = hyper_for_character(settings, **overrides)
    payload = {"target": TARGET, "snapshot_id": snap.id, "snapshot_sha256": snap.sha256,
               "base_model": base or settings.generate.model, "hyper": hp.as_dict(), "round": round_,
               "character_asset_id": asset.id, "trigger": trigger or settings.generate.trigger_word}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    key = f"train:{TARGET}:{asset.id}:{snap.sha256[:16]}:{digest}"
    return jobstore.enqueue(session, "train", key, payload), key, snap


def character_examples(ctx: Any, payload: dict[str, Any], edit_ids: list[int]) -> list[CharacterExample]:
    """The photo and the output of each accepted edit, captioned with the instance prompt; an
    image that cannot be read is left out with a warning."""
    from common.media.images import load_image

    prompt = INSTANCE_PROMPT.format(trigger=payload["trigger"])
    with ctx.db.session() as s:
        photo = s.get(Asset, int(payload["character_asset_id"]))
        if photo is None:
            raise InputError(f"character asset {payload['character_asset_id']} does not exist")
        uris = [photo.uri] + [e.output_uri for e in s.scalars(select(Edit).where(Edit.id.in_(edit_ids)))]
    out = []
    for uri in uris:
        try:
            out.append(CharacterExample(load_image(ctx.storage.get(uri), ctx.settings.images).image, prompt))
        except Exception as exc:
            log.warning("%s left out of character training: %s", uri, exc)
    return out


# --- the trainer --------------------------------------------------------------------------------


class CharacterLoRATrainer(loop.LoRATrainer):
    """Load FLUX's parts, attach a LoRA to the transformer, train on the rectified-flow loss, save."""

    desc = "train character"
    parts = ("transformer", "vae", "pipe")
    eval_draws = 8

    def __init__(self, base_model: str, hp: Hyper, *, trigger: str, character_asset_id: int | None = None) -> None:
        self.base_model = base_model
        self.hp = hp
        self.trigger = trigger
        self.character_asset_id = character_asset_id
        self.rt = loop.runtime_for(hp)
        self.transformer: Any = None
        self.encoded: list[_Encoded] = []

    def load(self) -> None:
        from diffusers import FluxPipeline

        try:
            pipe = FluxPipeline.from_pretrained(self.base_model, dtype=self.rt.dtype)
        except (OSError, ValueError) as exc:
            raise model_load_error(self.base_model, exc, "generate.model (SYNTHPIPE_GENERATE__MODEL)") from exc
        self.attach(pipe)

    def attach(self, pipe: Any) -> None:
        """Freeze ``pipe``'s parts on the training device and put the LoRA on its transformer
        (``load`` does this with the checkpoint; a benchmark hands over a pipeline it built)."""
        import torch
        from peft import LoraConfig

        rt = self.rt
        for part in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae, pipe.transformer):
            part.requires_grad_(False)
            part.to(rt.device)
        self.pipe = pipe
        self.vae, self.transformer = pipe.vae, pipe.transformer
        torch.manual_seed(self.hp.seed)  # the LoRA's initial weights
        self.transformer.add_adapter(LoraConfig(r=self.hp.rank, lora_alpha=self.hp.rank, init_lora_weights="gaussian",
                                                target_modules=TARGET_MODULES))
        self.params = [p for p in self.transformer.parameters() if p.requires_grad]
        for p in self.params:  # trainable weights in fp32 even when the frozen ones are bf16
            p.data = p.data.float()
        if self.hp.gradient_checkpointing and rt.device.startswith("cuda"):
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()

    def _pixels(self, image: Image.Image) -> Any:
        import numpy as np
        import torch

        side = max(16, self.hp.resolution // 16 * 16)
        arr = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
        return (torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1.0).to(self.rt.device, self.rt.dtype)

    def encode(self, examples: list[CharacterExample]) -> None:
        """Run the frozen VAE and text encoders once over every example."""
        import torch

        self.encoded = []
        with torch.no_grad():
            for ex in examples:
                dist = self.vae.encode(self._pixels(ex.image)).latent_dist
                embeds, pooled, text_ids = self.pipe.encode_prompt(
                    prompt=ex.prompt, prompt_2=None, device=self.rt.device, max_sequence_length=self._tokens())
                self.encoded.append(_Encoded(dist.mean, dist.std, embeds, pooled, text_ids))

    def _tokens(self) -> int:
        """T5 tokens of the captions: the pipelines' default (512), or less if the tokenizer says so."""
        return min(512, int(getattr(self.pipe.tokenizer_2, "model_max_length", 512) or 512))

    def batch_loss(self, indices: list[int], gen: Any, *, training: bool = True) -> Any:
        """The rectified-flow loss of examples ``indices``, noise and times drawn from ``gen``."""
        import torch
        import torch.nn.functional as F
        from diffusers import FluxPipeline

        rt = self.rt
        enc = [self.encoded[i] for i in indices]
        n = len(enc)
        cfg = self.vae.config
        mean, std = torch.cat([e.mean for e in enc]), torch.cat([e.std for e in enc])
        eps = torch.randn(mean.shape, generator=gen).to(rt.device, mean.dtype)
        x0 = (mean + std * eps - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
        noise = torch.randn(x0.shape, generator=gen).to(rt.device, x0.dtype)
        t = torch.rand(n, generator=gen).to(rt.device, x0.dtype)
        noisy = (1.0 - t.view(n, 1, 1, 1)) * x0 + t.view(n, 1, 1, 1) * noise
        _, c, h, w = x0.shape
        packed = FluxPipeline._pack_latents(noisy, n, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, rt.device, x0.dtype)
        guidance = torch.ones(n, device=rt.device) if self.transformer.config.guidance_embeds else None
        with torch.autocast(device_type=rt.device.split(":")[0], dtype=rt.dtype,
                            enabled=rt.device.startswith("cuda") and rt.dtype != torch.float32):
            pred = self.transformer(hidden_states=packed, timestep=t, guidance=guidance,
                                    pooled_projections=torch.cat([e.pooled for e in enc]),
                                    encoder_hidden_states=torch.cat([e.prompt_embeds for e in enc]),
                                    txt_ids=enc[0].text_ids, img_ids=img_ids, return_dict=False)[0]
        scale = 2 ** (len(cfg.block_out_channels) - 1)
        pred = FluxPipeline._unpack_latents(pred, h * scale, w * scale, scale)
        return F.mse_loss(pred.float(), (noise - x0).float(), reduction="mean")

    def lora_module(self) -> Any:
        return self.transformer

    def finish_result(self, result: TrainResult) -> TrainResult:
        # recorded on the adapter (hyperparameters): which character it draws and its token
        result.runtime.update(trigger=self.trigger, character_asset_id=self.character_asset_id,
                              instance_prompt=INSTANCE_PROMPT.format(trigger=self.trigger))
        return result

    def save(self, out_dir: Path) -> Path:
        """Write the adapter in diffusers' LoRA format (``load_lora_weights`` of FluxPipeline and
        FluxKontextPipeline reads it) and its config; returns ``out_dir``."""
        from diffusers import FluxPipeline

        return self.save_diffusers_lora(
            FluxPipeline, out_dir, layers_arg="transformer_lora_layers", weights_name=WEIGHTS_NAME,
            config={"r": self.hp.rank, "lora_alpha": self.hp.rank, "target_modules": TARGET_MODULES,
                    "init_lora_weights": "gaussian", "base_model": self.base_model, "format": "diffusers",
                    "trigger": self.trigger, "character_asset_id": self.character_asset_id})
