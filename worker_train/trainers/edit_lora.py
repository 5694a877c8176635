"""LoRA of the InstructPix2Pix UNet on (input image, instruction, edited image) examples.

The objective is InstructPix2Pix's: the UNet sees the noised latents of the edited image
concatenated with the latents of the input image, conditioned on the instruction's text
embedding, and predicts the noise (or the velocity, as the scheduler says). Conditioning
dropout keeps classifier-free guidance working: with probability ``d`` the text is replaced by
the empty prompt's embedding, with ``d`` the input image latents are zeroed, with ``d`` both.

The frozen parts (VAE, text encoder) run once per example before training; each step samples
fresh latents from the stored latent distribution. On CUDA the frozen weights are bf16 (the
LoRA weights stay fp32), with gradient checkpointing and 8-bit AdamW; on CPU everything is fp32.
The adapter is written in diffusers' LoRA format, which ``load_lora_weights`` reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from common.core.errors import model_load_error
from worker_train.trainers import loop
from worker_train.trainers.loop import Hyper

log = logging.getLogger(__name__)

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class EditExample:
    input_image: Image.Image
    edited_image: Image.Image
    prompt: str


@dataclass
class _Encoded:
    edited_mean: Any  # latent distribution of the edited image (1, C, h, w)
    edited_std: Any
    input_latents: Any  # mode of the input image's latent distribution
    text: Any  # (1, tokens, dim)


class EditLoRATrainer(loop.LoRATrainer):
    """Load the base pipeline's parts, attach a LoRA to the UNet, train, save."""

    desc = "train edit"
    parts = ("unet", "vae", "text_encoder")

    def __init__(self, base_model: str, hp: Hyper) -> None:
        self.base_model = base_model
        self.hp = hp
        self.rt = loop.runtime_for(hp)
        self.unet: Any = None

    # ------------------------------------------------------------------ parts
    def load(self) -> None:
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        rt = self.rt
        frozen = rt.dtype
        self.tokenizer: Any
        self.text_encoder: Any
        self.vae: Any
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(self.base_model, subfolder="tokenizer")
            self.text_encoder = CLIPTextModel.from_pretrained(self.base_model, subfolder="text_encoder", dtype=frozen)
            self.vae = AutoencoderKL.from_pretrained(self.base_model, subfolder="vae", dtype=frozen)
            self.unet = UNet2DConditionModel.from_pretrained(self.base_model, subfolder="unet", dtype=frozen)
            self.scheduler = DDPMScheduler.from_pretrained(self.base_model, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise model_load_error(self.base_model, exc) from exc
        parts: tuple[Any, ...] = (self.text_encoder, self.vae, self.unet)
        for part in parts:
            part.requires_grad_(False)
            part.to(rt.device)
        self.text_encoder.eval()
        self.vae.eval()
        torch.manual_seed(self.hp.seed)  # the LoRA's initial weights
        config = LoraConfig(r=self.hp.rank, lora_alpha=self.hp.rank, init_lora_weights="gaussian",
                            target_modules=TARGET_MODULES)
        self.unet.add_adapter(config)
        self.lora_config = config
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        for p in self.params:  # trainable weights in fp32 even when the frozen ones are bf16
            p.data = p.data.float()
        if self.hp.gradient_checkpointing and rt.device.startswith("cuda"):
            self.unet.enable_gradient_checkpointing()
        self.unet.train()

    # ------------------------------------------------------------------ data
    def _pixels(self, image: Image.Image) -> Any:
        import numpy as np
        import torch

        side = self.hp.resolution // 8 * 8
        arr = np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
        tensor = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1.0
        return tensor.to(self.rt.device, self.rt.dtype)

    def _text(self, prompts: list[str]) -> Any:
        import torch

        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text_encoder(ids.to(self.rt.device))[0]

    def encode(self, examples: list[EditExample]) -> None:
        """Run the frozen encoders once over every example."""
        import torch

        self.encoded: list[_Encoded] = []
        with torch.no_grad():
            for ex in examples:
                edited = self.vae.encode(self._pixels(ex.edited_image)).latent_dist
                source = self.vae.encode(self._pixels(ex.input_image)).latent_dist
                self.encoded.append(_Encoded(edited.mean, edited.std, source.mode(), self._text([ex.prompt])))
            self.null_text = self._text([""])

    # ------------------------------------------------------------------ objective
    def batch_loss(self, indices: list[int], gen: Any, *, training: bool = True) -> Any:
        """The InstructPix2Pix loss of examples ``indices``, noise and dropout drawn from ``gen``
        (conditioning dropout only while ``training``)."""
        import torch
        import torch.nn.functional as F

        rt = self.rt
        enc = [self.encoded[i] for i in indices]
        n = len(enc)
        mean = torch.cat([e.edited_mean for e in enc])
        std = torch.cat([e.edited_std for e in enc])
        eps = torch.randn(mean.shape, generator=gen).to(rt.device, mean.dtype)
        latents = (mean + std * eps) * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(rt.device, latents.dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), generator=gen).to(rt.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        text = torch.cat([e.text for e in enc])
        source = torch.cat([e.input_latents for e in enc])
        dropout = self.hp.conditioning_dropout if training else 0.0
        if dropout > 0:
            p = torch.rand(n, generator=gen).to(rt.device)
            drop_text = (p < 2 * dropout).view(n, 1, 1)
            text = torch.where(drop_text, self.null_text.expand_as(text), text)
            keep_image = 1 - ((p >= dropout) & (p < 3 * dropout)).to(source.dtype)
            source = source * keep_image.view(n, 1, 1, 1)
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with torch.autocast(device_type=rt.device.split(":")[0], dtype=rt.dtype,
                            enabled=rt.device.startswith("cuda") and rt.dtype != torch.float32):
            pred = self.unet(torch.cat([noisy, source], dim=1), timesteps, text, return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    # ------------------------------------------------------------------ train
    def lora_module(self) -> Any:
        return self.unet

    def save(self, out_dir: Path) -> Path:
        """Write the adapter (diffusers LoRA format) and its config; returns ``out_dir``."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        return self.save_diffusers_lora(
            StableDiffusionInstructPix2PixPipeline, out_dir, layers_arg="unet_lora_layers", weights_name=WEIGHTS_NAME,
            convert=True, config={"r": self.hp.rank, "lora_alpha": self.hp.rank, "target_modules": TARGET_MODULES,
                                  "init_lora_weights": "gaussian", "base_model": self.base_model, "format": "diffusers"})
