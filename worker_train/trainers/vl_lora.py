"""LoRA (QLoRA on CUDA) of a Qwen-VL model on (images + prompt -> accepted analysis JSON).

Each example is the chat the VL stage sends (system prompt, the item set's images, the user
prompt) followed by the accepted analysis as the assistant's answer; the loss is the
next-token loss on the answer only. LoRA goes on every linear layer of the language model
(attention and MLP), the vision tower stays frozen. On CUDA the base weights load in 4-bit
(bitsandbytes NF4, bf16 compute) unless ``quantization`` is ``none``; on CPU in fp32. The
adapter is saved in PEFT's format, which ``model.load_adapter(path)`` reads.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from common.core.errors import ConfigError, InputError, model_load_error
from worker_train.trainers import loop
from worker_train.trainers.loop import Hyper
from worker_vl.chat_template import find_chat_template

log = logging.getLogger(__name__)

#: every linear layer of the language model (the vision tower is left alone)
TARGET_MODULES = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
IMAGE_TOKEN = "<|image_pad|>"


@dataclass(frozen=True)
class VLExample:
    images: list[Image.Image]
    system_prompt: str
    user_prompt: str
    answer: str  # the accepted analysis JSON


@dataclass
class _Encoded:
    input_ids: Any
    labels: Any
    pixel_values: Any
    image_grid_thw: Any


class VLLoRATrainer(loop.LoRATrainer):
    """Load Qwen2.5-VL, attach a LoRA to its language model, train on the analyses people and the judge accepted, save."""

    desc = "train vl"
    parts = ("model",)

    def __init__(self, base_model: str, hp: Hyper) -> None:
        self.base_model = base_model
        self.hp = hp
        self.rt = loop.runtime_for(hp)
        self.model: Any = None

    @property
    def quantized(self) -> bool:
        q = self.hp.quantization
        return q == "4bit" or (q == "auto" and self.rt.device.startswith("cuda"))

    def load(self) -> None:
        import torch
        import transformers
        from peft import LoraConfig, get_peft_model

        if self.quantized and not self.rt.device.startswith("cuda"):
            raise ConfigError("train.vl_quantization 4bit (QLoRA) needs a CUDA device; use none on CPU")
        kwargs: dict[str, Any] = {"dtype": self.rt.dtype}
        if self.quantized:
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=self.rt.dtype,
                bnb_4bit_use_double_quant=True)
            kwargs["device_map"] = {"": self.rt.device}
        try:
            model = transformers.AutoModelForImageTextToText.from_pretrained(self.base_model, **kwargs)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.base_model)
            self.image_processor = transformers.AutoImageProcessor.from_pretrained(self.base_model)
        except (OSError, ValueError) as exc:
            raise model_load_error(self.base_model, exc) from exc
        if "device_map" not in kwargs:
            model = model.to(self.rt.device)  # type: ignore[arg-type]
        self.chat_template = find_chat_template(self.base_model, self.tokenizer)
        if self.quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=self.hp.gradient_checkpointing)
        elif self.hp.gradient_checkpointing and self.rt.device.startswith("cuda"):
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        torch.manual_seed(self.hp.seed)
        config = LoraConfig(r=self.hp.rank, lora_alpha=2 * self.hp.rank, lora_dropout=0.0,
                            target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
        self.model = get_peft_model(model, config)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        token: Any = getattr(model.config, "image_token_id", None) or self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.image_token_id = int(token)
        self.pass_mm_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
        self.model.train()

    # ------------------------------------------------------------------ data
    def _encode(self, ex: VLExample) -> _Encoded:
        import torch

        images = [im.convert("RGB") for im in ex.images]
        messages: list[dict[str, Any]] = []
        if ex.system_prompt:
            messages.append({"role": "system", "content": ex.system_prompt})
        messages.append({"role": "user", "content": [{"type": "image"} for _ in images]
                         + [{"type": "text", "text": ex.user_prompt}]})
        prompt: Any = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                    add_generation_prompt=True)
        side = self.hp.resolution
        vision = self.image_processor(images=images, return_tensors="pt",
                                      size={"shortest_edge": 56 * 56, "longest_edge": side * side})
        grid = vision["image_grid_thw"]
        merge = int(getattr(self.image_processor, "merge_size", 2))
        parts = prompt.split(IMAGE_TOKEN)
        if len(parts) - 1 != len(images):
            raise InputError(f"prompt has {len(parts) - 1} image placeholders for {len(images)} images")
        expanded = parts[0]
        for k in range(len(images)):
            expanded += IMAGE_TOKEN * int(grid[k].prod().item() // (merge * merge)) + parts[k + 1]
        prompt_ids = self.tokenizer(expanded, add_special_tokens=False)["input_ids"]
        end = "<|im_end|>" if "<|im_end|>" in self.tokenizer.get_vocab() else (self.tokenizer.eos_token or "")
        answer_ids = self.tokenizer(ex.answer + end, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids], dtype=torch.long)
        labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids], dtype=torch.long)
        return _Encoded(ids, labels, vision["pixel_values"], grid)

    def encode(self, examples: list[VLExample]) -> None:
        self.encoded = [self._encode(ex) for ex in examples]

    # ------------------------------------------------------------------ objective
    def example_loss(self, i: int) -> Any:
        import torch

        e = self.encoded[i]
        dev = self.rt.device
        inputs: dict[str, Any] = {
            "input_ids": e.input_ids.to(dev), "labels": e.labels.to(dev),
            "attention_mask": torch.ones_like(e.input_ids).to(dev),
            "pixel_values": e.pixel_values.to(dev, self.rt.dtype), "image_grid_thw": e.image_grid_thw.to(dev),
        }
        if self.pass_mm_types:
            inputs["mm_token_type_ids"] = (e.input_ids == self.image_token_id).long().to(dev)
        with torch.autocast(device_type=dev.split(":")[0], dtype=self.rt.dtype,
                            enabled=dev.startswith("cuda") and self.rt.dtype != torch.float32):
            return self.model(**inputs).loss.float()

    def fixed_batch_loss(self) -> float:
        import torch

        with torch.no_grad():
            n = min(len(self.encoded), 4)
            return float(sum(self.example_loss(i).item() for i in range(n)) / n)

    def step_loss(self, step: int) -> Any:
        # the accepted set in order (people's decisions first), batch_size examples a step
        n = len(self.encoded)
        start = (step * self.hp.batch_size) % n
        picks = [(start + k) % n for k in range(min(self.hp.batch_size, n))]
        return sum(self.example_loss(i) for i in picks) / len(picks)

    def lora_module(self) -> Any:
        return self.model

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir), safe_serialization=True)
        return out_dir

