"""Qwen-VL backend: any ``transformers`` image-text-to-text checkpoint of the Qwen-VL kind.

Qwen2.5-VL is the default; Qwen2-VL and Qwen3-VL load through the same code. Inputs are
prepared per item (so one broken item only fails itself), then the good items run through
ONE left-padded ``generate`` call. Preprocessing needs only the PIL image processor, the
tokenizer and the chat template: ``AutoProcessor`` of these models also builds a video
processor that requires torchvision, which is not available everywhere.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any

from common.core.errors import ConfigError, InputError, TransientError, model_load_error
from common.runtime.devices import resolve_device
from worker_vl.backends.base import VLItem, VLOutput, check_images
from worker_vl.chat_template import find_chat_template

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
_DTYPES = ("auto", "bfloat16", "float16", "float32")
_QUANT = (None, "none", "4bit", "8bit")
_IMAGE_TOKEN = "<|image_pad|>"


@dataclass
class _Encoded:
    """One item after preprocessing: unpadded ids and its images' patches."""

    index: int
    input_ids: list[int]
    pixel_values: Any  # torch.Tensor (patches, dim)
    image_grid_thw: Any  # torch.Tensor (images, 3)
    grammar: Any | None
    seconds: float


class QwenVLBackend:
    """Batch inference with a Qwen-VL checkpoint (hub id or local path).

    ``temperature == 0`` decodes greedily (then ``top_p`` and ``seed`` are unused).
    ``min_pixels``/``max_pixels`` bound the resolution each image is resized to (None
    keeps the checkpoint's). Items need ``1..max_images`` images, each at least
    ``min_image_side`` pixels on its short side.
    """

    name = "qwen"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        quantization: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = 1024,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        *,
        max_images: int = 4,
        min_image_side: int = 14,
        max_string_length: int | None = None,
        attn_implementation: str | None = None,
        adapter: str | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ConfigError(f"vl.dtype: {dtype!r} is not allowed; use one of {list(_DTYPES)}")
        if quantization not in _QUANT:
            raise ConfigError(f"vl.quantization: {quantization!r}; use none, 4bit or 8bit")
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise ConfigError("vl.min_pixels must not exceed vl.max_pixels")
        if max_new_tokens < 1:
            raise ConfigError("vl.max_new_tokens must be at least 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError("vl.temperature must be >= 0 and vl.top_p in (0, 1]")
        self.model_id = model
        self.device = device
        self.dtype = dtype
        self.quantization = None if quantization == "none" else quantization
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_images = max_images
        self.min_image_side = min_image_side
        self.max_string_length = max_string_length
        self.attn_implementation = attn_implementation
        self.adapter = adapter  # a folder holding a PEFT LoRA of this model, or None
        self.model: Any = None
        self.tokenizer: Any = None
        self.image_processor: Any = None
        self.chat_template: str | None = None
        self.grammar: Any = None  # worker_vl.constrained.JsonGrammar, built on first schema
        self._torch_device: Any = None
        self._image_token_id: int = -1
        self._pad_id: int = 0
        self._stop_ids: list[int] = []
        self._pass_mm_types = False

    # ------------------------------------------------------------------ loading
    def params(self) -> dict[str, Any]:
        """Settings that shape the outputs, for provenance."""
        keys = "model_id dtype quantization min_pixels max_pixels max_new_tokens temperature top_p seed adapter"
        return {"backend": self.name} | {k: getattr(self, k) for k in keys.split()}

    def load(self) -> None:
        """Load model, tokenizer, image processor and chat template once. A checkpoint that
        cannot be found or read is a settings error naming ``vl_model``, not a retry."""
        if self.model is not None:
            return
        try:
            self._load()
        except ConfigError:
            raise
        except Exception as exc:
            self.model = None
            raise model_load_error(self.model_id, exc, "vl_model (SYNTHPIPE_VL_MODEL)") from exc

    def _load(self) -> None:
        import torch
        import transformers

        t0 = time.perf_counter()
        self._torch_device = dev = torch.device(resolve_device(self.device))
        torch_dtype = getattr(torch, self.dtype) if self.dtype != "auto" else None
        torch_dtype = torch_dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)

        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.quantization:
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=self.quantization == "4bit",
                load_in_8bit=self.quantization == "8bit",
                bnb_4bit_compute_dtype=torch_dtype,
                bnb_4bit_quant_type="nf4",
            )
        if self.quantization or dev.type == "cuda":
            kwargs["device_map"] = {"": str(dev)}
        model = self._load_model(transformers, kwargs)
        if "device_map" not in kwargs:
            model = model.to(dev)
        if self.adapter:
            model.load_adapter(self.adapter)
        self.model = model.eval()

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_id)
        self.tokenizer.padding_side = "left"
        self.image_processor = transformers.AutoImageProcessor.from_pretrained(self.model_id)
        self.chat_template = find_chat_template(self.model_id, self.tokenizer)

        config = self.model.config
        self._image_token_id = int(
            getattr(config, "image_token_id", None)
            or self.tokenizer.convert_tokens_to_ids(_IMAGE_TOKEN)
        )
        gen = self.model.generation_config
        stops = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        stops = [*stops, self.tokenizer.eos_token_id]
        self._stop_ids = sorted({int(s) for s in stops if s is not None})
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = gen.pad_token_id if gen.pad_token_id is not None else self._stop_ids[0]
        self._pad_id = int(pad)
        forward_args = inspect.signature(self.model.forward).parameters
        self._pass_mm_types = "mm_token_type_ids" in forward_args
        took = time.perf_counter() - t0
        logger.info("loaded %s on %s as %s in %.1fs", self.model_id, dev, torch_dtype, took)

    def _load_model(self, transformers: Any, kwargs: dict[str, Any]) -> Any:
        """``AutoModelForImageTextToText``, else the class the config names."""
        auto = getattr(transformers, "AutoModelForImageTextToText", None)
        if auto is not None:
            try:
                return auto.from_pretrained(self.model_id, **kwargs)
            except ValueError as exc:  # config class not mapped to this auto class
                logger.info("AutoModelForImageTextToText refused %s: %s", self.model_id, exc)
        config = transformers.AutoConfig.from_pretrained(self.model_id)
        for arch in getattr(config, "architectures", None) or []:
            cls = getattr(transformers, arch, None)
            if cls is not None:
                return cls.from_pretrained(self.model_id, **kwargs)
        raise ConfigError(f"vl.model: no image-text-to-text model class for {self.model_id!r}")

    def unload(self) -> None:
        """Drop the model and free accelerator memory."""
        if self.model is None:
            return
        import gc

        import torch

        self.model = None
        self.grammar = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ inference
    def run_batch(self, items: list[VLItem]) -> list[VLOutput]:
        """Answer every item; failures land in that item's ``error``."""
        self.load()
        outputs: list[VLOutput | None] = [None] * len(items)
        encoded: list[_Encoded] = []
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            try:
                enc = self._encode(i, item)
                enc.seconds = time.perf_counter() - t0
                encoded.append(enc)
            except Exception as exc:  # one bad item must not fail the batch
                outputs[i] = _error_output(exc, item, time.perf_counter() - t0)
        if encoded:
            for enc, out in zip(encoded, self._generate_safely(encoded), strict=True):
                outputs[enc.index] = out
        return [o if o is not None else VLOutput("", error="no output") for o in outputs]

    def _encode(self, index: int, item: VLItem) -> _Encoded:
        """Validate one item and turn it into token ids and image patches."""
        check_images(item, self.max_images, self.min_image_side)
        images = [img if img.mode == "RGB" else img.convert("RGB") for img in item.images]
        n = len(images)
        grammar = None
        if item.json_schema is not None:
            grammar = self._compile(item)
        messages: list[dict[str, Any]] = []
        if item.system_prompt:
            messages.append({"role": "system", "content": item.system_prompt})
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": item.user_prompt}]
        messages.append({"role": "user", "content": content})
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        image_kwargs: dict[str, Any] = {}
        if self.min_pixels is not None or self.max_pixels is not None:
            size = dict(getattr(self.image_processor, "size", None) or {})
            if self.min_pixels is not None:
                size["shortest_edge"] = self.min_pixels
            if self.max_pixels is not None:
                size["longest_edge"] = self.max_pixels
            image_kwargs["size"] = size
        try:
            vision = self.image_processor(images=images, return_tensors="pt", **image_kwargs)
        except ValueError as exc:
            raise InputError(f"item {item.key}: image preprocessing failed: {exc}") from exc
        grid = vision["image_grid_thw"]
        merge = int(getattr(self.image_processor, "merge_size", 2))
        image_token = self.tokenizer.convert_ids_to_tokens(self._image_token_id)
        parts = text.split(image_token)
        if len(parts) - 1 != n:
            raise InputError(
                f"item {item.key}: prompt has {len(parts) - 1} image placeholders for {n} images; "
                "remove image tokens from the prompt text"
            )
        expanded = parts[0]
        for k in range(n):
            expanded += image_token * int(grid[k].prod().item() // (merge * merge)) + parts[k + 1]
        ids = self.tokenizer(expanded, add_special_tokens=False)["input_ids"]
        return _Encoded(index, list(ids), vision["pixel_values"], grid, grammar, 0.0)

    def grammar_for(self, schema: dict[str, Any]) -> Any:
        """The compiled (cached) xgrammar grammar of ``schema`` for this model.

        Stage services can call it at start-up to check their schema compiles.
        """
        from worker_vl.constrained import JsonGrammar

        self.load()
        if self.grammar is None:
            vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
            self.grammar = JsonGrammar(
                self.tokenizer, vocab_size, self._stop_ids, max_string_length=self.max_string_length
            )
        return self.grammar.compile(schema)

    def _compile(self, item: VLItem) -> Any:
        try:
            return self.grammar_for(item.json_schema or {})
        except Exception as exc:
            raise InputError(f"item {item.key}: json_schema: {exc}") from exc

    def _generate_safely(self, encoded: list[_Encoded]) -> list[VLOutput]:
        """Generate for the group; if the whole call fails, retry the items one by one."""
        import torch

        try:
            return self._generate(encoded)
        except Exception as exc:
            err: BaseException = exc
            if isinstance(exc, torch.cuda.OutOfMemoryError):  # worth a retry, maybe elsewhere
                torch.cuda.empty_cache()
                err = TransientError(f"out of accelerator memory: {exc}")
            if len(encoded) == 1:
                logger.warning("generate failed for item %d: %s", encoded[0].index, exc)
                return [_error_output(err, None, encoded[0].seconds)]
            logger.warning(
                "batched generate failed (%s); running %d items singly", exc, len(encoded)
            )
            return [out for enc in encoded for out in self._generate_safely([enc])]

    def _generate(self, encoded: list[_Encoded]) -> list[VLOutput]:
        """ONE left-padded ``generate`` call over ``encoded``."""
        import torch
        from transformers import LogitsProcessorList

        from worker_vl.constrained import check_json_output

        dev = self._torch_device
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for r, e in enumerate(encoded):
            ids[r, width - len(e.input_ids) :] = torch.tensor(e.input_ids, dtype=torch.long)
            mask[r, width - len(e.input_ids) :] = 1
        inputs: dict[str, Any] = {
            "input_ids": ids.to(dev),
            "attention_mask": mask.to(dev),
            "pixel_values": torch.cat([e.pixel_values for e in encoded]).to(dev, self.model.dtype),
            "image_grid_thw": torch.cat([e.image_grid_thw for e in encoded]).to(dev),
        }
        if self._pass_mm_types:
            inputs["mm_token_type_ids"] = (ids == self._image_token_id).long().to(dev)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": self._pad_id,
            "eos_token_id": self._stop_ids,
            "do_sample": self.temperature > 0,
        }
        if self.temperature > 0:
            gen_kwargs.update(temperature=self.temperature, top_p=self.top_p)
            torch.manual_seed(self.seed)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        grammars = [e.grammar for e in encoded]
        processor = None
        if any(g is not None for g in grammars):
            processor = self.grammar.processor(grammars)
            gen_kwargs["logits_processor"] = LogitsProcessorList([processor])

        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen_kwargs)
        wall = time.perf_counter() - t0
        new = out[:, width:].tolist()
        results = []
        for r, e in enumerate(encoded):
            tokens = new[r]
            cut = next((k for k, t in enumerate(tokens) if t in self._stop_ids), None)
            completion = tokens if cut is None else tokens[: cut + 1]
            text = self.tokenizer.decode(completion, skip_special_tokens=True)
            result = VLOutput(
                raw_text=text,
                prompt_tokens=len(e.input_ids),
                completion_tokens=len(completion),
                seconds=e.seconds + wall / len(encoded),
            )
            if e.grammar is not None:
                failure = processor.failed.get(r) if processor is not None else None
                if (exc := check_json_output(text, failure)) is not None:
                    result.error, result.error_kind, result.error_code = str(exc), exc.kind, exc.code
            results.append(result)
        logger.debug("generated %d items in %.2fs (prompt width %d)", len(encoded), wall, width)
        return results


def _error_output(exc: BaseException, item: VLItem | None, seconds: float) -> VLOutput:
    if item is not None:
        logger.warning("item %s failed: %s", item.key, exc)
    return VLOutput.from_exception(exc, seconds=seconds)
