"""Tiny random edit checkpoints, built offline in seconds, for tests and smoke runs.

``build_tiny_instruct_pix2pix(out_dir)`` writes an InstructPix2Pix pipeline (the component
shapes of diffusers' own fast tests); ``build_tiny_qwen_image_edit_plus(out_dir)`` writes a
Qwen-Image-Edit Plus pipeline laid out like the released checkpoint (``processor/`` holds the
image processor config and the tokenizer). Weights are random with a fixed seed, so the
outputs are noise-like but deterministic. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from common.devkit.tinytok import write_clip_tokenizer_files

logger = logging.getLogger(__name__)

def build_tiny_instruct_pix2pix(out_dir: str | Path) -> Path:
    """Write a tiny random InstructPix2Pix pipeline to ``out_dir``; return the directory.

    UNet with 8 input channels (4 noise + 4 image latents) and cross-attention width 32, a
    4-level VAE (downsampling 8x, like Stable Diffusion's), a 2-layer CLIP text encoder, an
    Euler ancestral scheduler and no safety checker. Loads back with
    ``StableDiffusionInstructPix2PixPipeline.from_pretrained(out_dir)``.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_src = write_clip_tokenizer_files(out / "_clip_tokenizer_src")
    # model_max_length must be set: without it the pipeline pads prompts to ~1e30 tokens.
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_src), model_max_length=77)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=128,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    save_instruct_pix2pix(out, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=scheduler, tokenizer_src=tok_src)
    logger.info("tiny InstructPix2Pix written to %s", out)
    return out


def save_instruct_pix2pix(out: Path, *, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any,
                          tokenizer_src: Path) -> None:
    """Assemble an InstructPix2Pix pipeline (no safety checker) from its parts, write it with
    ``save_pretrained`` to ``out`` and remove the tokenizer's source files."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)  # type: ignore[attr-defined]
    for path in tokenizer_src.iterdir():
        path.unlink()
    tokenizer_src.rmdir()


def build_tiny_qwen_image_edit_plus(out_dir: str | Path) -> Path:
    """Write a tiny random Qwen-Image-Edit Plus pipeline to ``out_dir``; return the directory.

    Components follow diffusers' fast tests (2-layer transformer, z_dim 4 VAE, a Qwen2.5-VL
    text encoder with 16-wide text and vision towers) with the offline tokenizer of
    ``common.devkit.tinytok``. The layout matches the released checkpoint: ``model_index.json``
    names ``transformers.Qwen2VLProcessor`` and ``processor/`` holds the image processor
    config plus the tokenizer, so ``QwenImageEditPlusBackend`` loads it like the real model.
    Run it with small reference-image areas (``tiny_run_settings`` sets
    ``edit.plus_vae_image_area``): at the pipeline's native 1024x1024 the tiny VAE alone takes
    ~40 s on CPU.
    """
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from common.devkit.tinytok import build_qwen_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_qwen_tokenizer(None)
    token_ids = tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    )

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    torch.manual_seed(0)
    z_dim = 4
    vae = AutoencoderKLQwenImage(
        base_dim=z_dim * 6,
        z_dim=z_dim,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": len(tokenizer),
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        vision_start_token_id=token_ids[0],
        vision_end_token_id=token_ids[1],
        image_token_id=token_ids[2],
        video_token_id=token_ids[3],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    pipe = QwenImageEditPlusPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=None,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)  # type: ignore[attr-defined]

    # processor/: image processor config + tokenizer, as in the released checkpoint. Small
    # pixel bounds keep the vision sequence short (at most 16 merged tokens per image).
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    image_processor.save_pretrained(str(out / "processor"))
    tokenizer.save_pretrained(str(out / "processor"))
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    logger.info("tiny Qwen-Image-Edit Plus written to %s", out)
    return out


# --------------------------------------------------------------------------- FLUX

#: Words the tiny T5 tokenizer is trained on (edit instructions, generate prompts, trigger words).
_T5_CORPUS = (
    "a photo of sks person make it snowy turn the sky red put a hat on the person change the background "
    "to a sunny beach at golden hour soft daylight neon night studio softbox watercolour painting oil "
    "painting anime pencil sketch city street park cafe rooftop terrace spring summer autumn winter "
    "minimalist streetwear vintage keep the face and pose the same close-up portrait full body wide shot"
)


def _tiny_t5_tokenizer() -> Any:
    """A small T5 (Unigram, metaspace) tokenizer trained offline with the ``tokenizers`` library.

    Ids follow T5's layout: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then the learned pieces; no
    sentinel tokens (the FLUX pipelines only encode)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    trainer_tok = Tokenizer(models.Unigram())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=256, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    trainer_tok.train_from_iterator([_T5_CORPUS] * 4, trainer)
    pieces = [(str(piece), float(score)) for piece, score in json.loads(trainer_tok.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _tiny_flux_components(work_dir: Path) -> dict[str, Any]:
    """Random FLUX components with fixed seeds: a 1+1-block ``FluxTransformer2DModel`` with
    guidance embedding (as FLUX.1-dev and Kontext-dev), a 2-layer CLIP text encoder, a 2-layer T5
    encoder, a 4-level ``AutoencoderKL`` (8x downsampling, 4 latent channels, FLUX's scaling and
    shift factors, no quant convs) and a ``FlowMatchEulerDiscreteScheduler`` with FLUX's dynamic
    shifting. The same components suit ``FluxPipeline`` and ``FluxKontextPipeline``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    tok_src = write_clip_tokenizer_files(work_dir / "_clip_tokenizer_src")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_src), model_max_length=77)
    for path in tok_src.iterdir():
        path.unlink()
    tok_src.rmdir()
    tokenizer_2 = _tiny_t5_tokenizer()

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
    ))
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
    ))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        sample_size=64, in_channels=3, out_channels=3, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.1159, scaling_factor=0.3611,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return {"transformer": transformer, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2, "vae": vae, "scheduler": scheduler}


def build_tiny_flux_kontext(out_dir: str | Path) -> Path:
    """Write a tiny random FLUX.1 Kontext pipeline to ``out_dir``; return the directory.

    Laid out like ``black-forest-labs/FLUX.1-Kontext-dev`` (``model_index.json`` names
    ``FluxKontextPipeline``; ``transformer/``, ``text_encoder/`` (CLIP), ``text_encoder_2/`` (T5),
    ``tokenizer/``, ``tokenizer_2/``, ``vae/``, ``scheduler/``), so it loads with
    ``FluxKontextPipeline.from_pretrained(out_dir)`` like the real checkpoint."""
    from diffusers import FluxKontextPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = FluxKontextPipeline(**_tiny_flux_components(out), image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(str(out), safe_serialization=True)  # type: ignore[attr-defined]
    logger.info("tiny FLUX.1 Kontext written to %s", out)
    return out


def build_tiny_flux(out_dir: str | Path) -> Path:
    """Write a tiny random FLUX.1 text-to-image pipeline (``FluxPipeline``, laid out like
    ``black-forest-labs/FLUX.1-dev``) to ``out_dir``; return the directory. Same component
    shapes as :func:`build_tiny_flux_kontext`, so a LoRA trained on one loads into the other."""
    from diffusers import FluxPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = FluxPipeline(**_tiny_flux_components(out), image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(str(out), safe_serialization=True)  # type: ignore[attr-defined]
    logger.info("tiny FLUX.1 written to %s", out)
    return out


__all__ = [
    "build_tiny_instruct_pix2pix",
    "build_tiny_qwen_image_edit_plus",
    "write_clip_tokenizer_files",
]
