"""Qwen2.5-VL's chat template and where a checkpoint keeps its own: one lookup for the VL
backend (``worker_vl.backends.qwen``) and the VL LoRA trainer (``worker_train``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Qwen2.5-VL-Instruct's chat template (images and videos become vision placeholders).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def find_chat_template(model_id: str, tokenizer: Any) -> str:
    """The checkpoint's chat template file (``chat_template.jinja`` or ``.json``), else the
    tokenizer's, else Qwen2.5-VL's (with a warning: the checkpoint should ship one)."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(model_id, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return str(json.loads(text)["chat_template"]) if name.endswith(".json") else text
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.chat_template)
    log.warning("%s has no chat template; using Qwen2.5-VL's", model_id)
    return QWEN_VL_CHAT_TEMPLATE
