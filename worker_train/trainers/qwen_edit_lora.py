"""LoRA of the Qwen-Image-Edit Plus transformer on (person + garments, instruction, edited image).

The conditioning is the pipeline's own: the instruction goes through the Qwen2.5-VL text
encoder together with the reference images ``[person, *garments]`` resized to the condition
area (``encode_prompt(image=...)``, "Picture 1", "Picture 2", ...), and the reference images'
VAE latents (normalised by the VAE's latents mean/std, resized to the VAE area) are packed and
concatenated after the noisy target latents along the sequence, with ``img_shapes`` naming
every part, exactly as ``QwenImageEditPlusPipeline.__call__`` does at inference.

The objective is rectified flow: for clean latents ``x0`` of the edited image, noise ``n`` and
``t ~ U(0, 1)``, the transformer sees ``(1 - t) x0 + t n`` (timestep ``t``, as the pipeline
passes ``sigma``) and is trained to predict the velocity ``n - x0`` on the target part of its
output. The frozen parts (VAE, text encoder) run once per example; only the LoRA weights of the
transformer's attention projections train. Examples run one at a time inside a step (their
prompt lengths differ) and the batch loss is their mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from common.core.errors import model_load_error
from worker_train.trainers import loop
from worker_train.trainers.loop import Hyper, TrainResult

log = logging.getLogger(__name__)

TARGET = "edit-plus"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class PlusExample:
    images: list[Image.Image]  # [person, *garments]
    edited_image: Image.Image
    prompt: str


@dataclass
class _Encoded:
    target: Any  # normalised latents of the edited image (1, C, 1, h, w)
    references: Any  # packed reference latents (1, tokens, 4C)
    prompt_embeds: Any  # (1, tokens, dim)
    prompt_mask: Any  # (1, tokens) or None
    img_shapes: list[tuple[int, int, int]]


class QwenEditPlusLoRATrainer(loop.LoRATrainer):
    """Load the Plus pipeline, attach a LoRA to its transformer, train on the rectified-flow loss, save."""

    desc = "train edit-plus"
    parts = ("transformer", "vae", "pipe")

    def __init__(self, base_model: str, hp: Hyper, *, vae_image_area: int | None = None,
                 condition_image_area: int | None = None) -> None:
        self.base_model = base_model
        self.hp = hp
        self.vae_image_area = vae_image_area
        self.condition_image_area = condition_image_area
        self.rt = loop.runtime_for(hp)
        self.transformer: Any = None
        self.encoded: list[_Encoded] = []

    def load(self) -> None:
        from diffusers import QwenImageEditPlusPipeline

        from worker_edit.backends.qwen_image_edit import image_only_processor

        root = Path(self.base_model)
        if not root.is_dir():
            try:
                root = Path(QwenImageEditPlusPipeline.download(self.base_model))
            except Exception as exc:
                raise model_load_error(self.base_model, exc, "edit.plus_model (SYNTHPIPE_EDIT__PLUS_MODEL)") from exc
        tok_dir = root / "processor" if (root / "processor" / "tokenizer_config.json").exists() else root / "tokenizer"
        try:
            processor = image_only_processor(root / "processor", tok_dir)
            pipe = QwenImageEditPlusPipeline.from_pretrained(str(root), processor=processor, dtype=self.rt.dtype)
        except (OSError, ValueError) as exc:
            raise model_load_error(self.base_model, exc, "edit.plus_model (SYNTHPIPE_EDIT__PLUS_MODEL)") from exc
        self.attach(pipe)

    def attach(self, pipe: Any) -> None:
        """Freeze ``pipe``'s parts on the training device and put the LoRA on its transformer."""
        import importlib

        import torch
        from peft import LoraConfig

        rt = self.rt
        for part in (pipe.text_encoder, pipe.vae, pipe.transformer):
            part.requires_grad_(False)
            part.to(rt.device)
        pipe.text_encoder.eval()
        pipe.vae.eval()
        self.pipe, self.vae, self.transformer = pipe, pipe.vae, pipe.transformer
        self._module = importlib.import_module(type(pipe).__call__.__module__)
        torch.manual_seed(self.hp.seed)  # the LoRA's initial weights
        self.transformer.add_adapter(LoraConfig(r=self.hp.rank, lora_alpha=self.hp.rank, init_lora_weights="gaussian",
                                                target_modules=TARGET_MODULES))
        self.params = [p for p in self.transformer.parameters() if p.requires_grad]
        for p in self.params:  # trainable weights in fp32 even when the frozen ones are bf16
            p.data = p.data.float()
        if self.hp.gradient_checkpointing and rt.device.startswith("cuda"):
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()

    # ------------------------------------------------------------------ data
    def _areas(self) -> tuple[int, int]:
        m = self._module
        return (self.vae_image_area or m.VAE_IMAGE_SIZE, self.condition_image_area or m.CONDITION_IMAGE_SIZE)

    def _latents(self, image: Image.Image, width: int, height: int) -> Any:
        pixels = self.pipe.image_processor.preprocess(image.convert("RGB"), height, width).unsqueeze(2)
        return self.pipe._encode_vae_image(pixels.to(self.rt.device, self.rt.dtype), generator=None)

    def encode(self, examples: list[PlusExample]) -> None:
        """Run the frozen VAE and text encoder once over every example, as the pipeline would."""
        import torch

        calc = self._module.calculate_dimensions
        vae_area, cond_area = self._areas()
        scale = self.pipe.vae_scale_factor
        side = max(16, self.hp.resolution // 16 * 16)
        self.encoded = []
        with torch.no_grad():
            for ex in examples:
                conds, refs, shapes = [], [], [(1, side // scale // 2, side // scale // 2)]
                for img in ex.images:
                    ratio = img.width / img.height
                    cw, ch = calc(cond_area, ratio)
                    vw, vh = calc(vae_area, ratio)
                    conds.append(self.pipe.image_processor.resize(img.convert("RGB"), ch, cw))
                    lat = self._latents(img, vw, vh)
                    _, c, _, h, w = lat.shape
                    refs.append(self.pipe._pack_latents(lat, 1, c, h, w))
                    shapes.append((1, h // 2, w // 2))
                embeds, mask = self.pipe.encode_prompt(prompt=[ex.prompt], image=conds, device=self.rt.device)
                target = self._latents(ex.edited_image, side, side)
                self.encoded.append(_Encoded(target, torch.cat(refs, dim=1), embeds, mask, shapes))

    # ------------------------------------------------------------------ objective
    def _example_loss(self, enc: _Encoded, gen: Any) -> Any:
        import torch
        import torch.nn.functional as F

        rt = self.rt
        x0 = enc.target
        _, c, _, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=gen).to(rt.device, x0.dtype)
        t = torch.rand(1, generator=gen).to(rt.device, x0.dtype)
        noisy = (1.0 - t) * x0 + t * noise
        packed = self.pipe._pack_latents(noisy, 1, c, h, w)
        guidance = torch.ones(1, device=rt.device) if self.transformer.config.guidance_embeds else None
        with torch.autocast(device_type=rt.device.split(":")[0], dtype=rt.dtype,
                            enabled=rt.device.startswith("cuda") and rt.dtype != torch.float32):
            pred = self.transformer(hidden_states=torch.cat([packed, enc.references], dim=1), timestep=t,
                                    guidance=guidance, encoder_hidden_states=enc.prompt_embeds,
                                    encoder_hidden_states_mask=enc.prompt_mask, img_shapes=[enc.img_shapes],
                                    return_dict=False)[0]
        pred = pred[:, : packed.size(1)]
        target = self.pipe._pack_latents(noise - x0, 1, c, h, w)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    def batch_loss(self, indices: list[int], gen: Any, *, training: bool = True) -> Any:
        """The rectified-flow loss of examples ``indices`` (their mean), noise and times from ``gen``."""
        losses = [self._example_loss(self.encoded[i], gen) for i in indices]
        return sum(losses[1:], losses[0]) / len(losses)

    # ------------------------------------------------------------------ train
    def lora_module(self) -> Any:
        return self.transformer

    def finish_result(self, result: TrainResult) -> TrainResult:
        vae_area, cond_area = self._areas()
        result.runtime.update(vae_image_area=vae_area, condition_image_area=cond_area)
        return result

    def save(self, out_dir: Path) -> Path:
        """Write the adapter in diffusers' LoRA format (``QwenImageEditPlusPipeline.load_lora_weights``
        reads it) and its config; returns ``out_dir``."""
        from diffusers import QwenImageEditPlusPipeline

        return self.save_diffusers_lora(
            QwenImageEditPlusPipeline, out_dir, layers_arg="transformer_lora_layers", weights_name=WEIGHTS_NAME,
            config={"r": self.hp.rank, "lora_alpha": self.hp.rank, "target_modules": TARGET_MODULES,
                    "init_lora_weights": "gaussian", "base_model": self.base_model, "format": "diffusers"})


def plus_examples(ctx: Any, edit_ids: list[int]) -> list[PlusExample]:
    """([person, *garments], instruction, edited image) of each edit; one that cannot be read is
    left out with a warning."""
    import io

    from sqlalchemy import select

    from common.domain.itemsets import load_member_images, read_item_set
    from common.store.rows import Analysis, Edit

    with ctx.db.session() as s:
        edits = {e.id: e for e in s.scalars(select(Edit).where(Edit.id.in_(edit_ids)))}
        ids = [e.analysis_id for e in edits.values() if e.analysis_id is not None]
        analyses = {a.id: a for a in s.scalars(select(Analysis).where(Analysis.id.in_(ids)))}
        s.expunge_all()
    out = []
    for eid in edit_ids:
        edit = edits.get(eid)
        if edit is None:
            continue
        analysis = analyses.get(edit.analysis_id or -1)
        prompt = edit.edit_prompt or (analysis.edit_prompt if analysis else None)
        try:
            with ctx.db.session() as s:
                view = read_item_set(s, edit.item_set_id)
            images = load_member_images(ctx.storage, view.members, ctx.settings.images)
            with Image.open(io.BytesIO(ctx.storage.get(edit.output_uri))) as im:
                edited = im.convert("RGB")
        except Exception as exc:
            log.warning("edit %s left out of edit-plus training: %s", edit.id, exc)
            continue
        if prompt:
            out.append(PlusExample(images, edited, prompt))
    return out
