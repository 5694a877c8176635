"""One validated settings object, read from ``SYNTHPIPE_*`` variables and ``synthpipe.toml``.

Nested sections use ``__`` in variable names: ``SYNTHPIPE_VL__BATCH_SIZE=8`` sets
``settings.vl.batch_size``. The same keys go in ``synthpipe.toml`` as tables (``[vl]``).
Defaults are the embedded ones: a SQLite file and local storage under ``data_dir``.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common.core import security
from common.core.backends import EDIT_BACKENDS, MIN_STEPS, SCHEDULERS, SCORERS, VL_BACKENDS
from common.core.errors import ConfigError
from common.core.keywords import load_keywords
from common.core.prompts import PROMPTS_DIR, load_template

ENV_PREFIX = "SYNTHPIPE_"
TOML_FILE_ENV = "SYNTHPIPE_CONFIG"
#: SYNTHPIPE_* variables that are not settings (the config file's path, test and benchmark hooks)
NOT_SETTINGS = (TOML_FILE_ENV,)
RECIPES = ("tryon", "enrich")
NOT_SETTINGS_PREFIXES = ("SYNTHPIPE_TEST_", "SYNTHPIPE_BENCH_")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _check_device(value: str) -> str:
    if not DEVICE_RE.fullmatch(value):
        raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
    return value


#: a device name, checked when settings load (that the machine has it is checked at model load)
Device = Annotated[str, AfterValidator(_check_device)]


def _split_commas(value: Any) -> Any:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


#: a list given as ``a,b,c`` in an environment variable (or as a list in the TOML file)
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


def _check_name(value: str, registry: Any, what: str) -> str:
    if value not in registry:
        raise ValueError(f"unknown {what}; allowed: {', '.join(sorted(registry))}")
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_adapter(value: str) -> str:
    if value in ("none", "latest") or (value.isdigit() and int(value) > 0):
        return value
    raise ValueError("must be an adapter id (synthpipe adapters list), latest or none")


class JobSettings(Section):
    lease_s: float = Field(600.0, gt=0, description="how long a claimed job is held before it returns to the queue")
    max_attempts: int = Field(3, ge=1, description="attempts before a job ends in dead")
    backoff_base_s: float = Field(5.0, ge=0, description="first retry delay; doubles each attempt")
    backoff_max_s: float = Field(600.0, ge=0, description="longest retry delay")
    overlap: bool = Field(False, description="claim and prepare the next batch and record the last one while the model runs (local runner and Celery workers; stages with phases: vl, edit, generate)")
    overlap_batches: int = Field(8, ge=1, description="a Celery task that overlaps claims at most this many batches before it returns")
    overlap_task_share: float = Field(0.5, gt=0, le=0.9, description="... and claims no new batch after this share of celery.soft_time_limit_s")


class ImageSettings(Section):
    formats: list[Literal["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]] = Field(["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"], description="formats the safe loader accepts")
    max_bytes: int = Field(25_000_000, gt=0, description="files larger than this are refused unread")
    max_pixels: int = Field(40_000_000, gt=0, description="refused before decoding above this")
    min_side: int = Field(64, ge=1, description="images with a shorter side are refused")
    animated: Literal["reject", "first_frame"] = Field("reject", description="reject animated images, or use their first frame")


class ImportSettings(Section):
    max_prompt_chars: int = Field(4000, ge=1, description="`synthpipe import` refuses a row whose instruction is longer (import.prompt_too_long): text encoders read a few hundred tokens, and a huge prompt costs memory in every stage that scores it")


class PairingSettings(Section):
    keywords_file: Path | None = Field(None, description="YAML of keyword axes (default: the shipped common/core/data/keywords.yaml)")
    enrich_variations: int = Field(5, ge=1, le=50, description="variations per character photo")
    max_garments: int = Field(3, ge=1, le=3, description="most garment photos in one try-on set")
    auto_pair: bool = Field(True, description="pair new crawled person/garment assets automatically")


class VLOpenAISettings(Section):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible server of the openai VL backend (vLLM, SGLang, a hosted API), up to /v1")
    model: str | None = Field(None, description="model name the server serves (default: vl_model, which is what `vllm serve DIR` calls it)")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (unset: no key is sent); the key is never logged or recorded")
    api_key_file: Path | None = Field(None, description="file holding the API key (wins over api_key_env)")
    timeout_s: float = Field(120.0, gt=0, description="longest wait for one answer (code vl.timeout, retried)")
    connect_timeout_s: float = Field(5.0, gt=0, description="longest wait to connect (code vl.server_unreachable, retried)")
    max_in_flight: int = Field(8, ge=1, le=1024, description="requests one worker keeps in flight at once (set vl.batch_size at least this high to keep them busy)")
    max_retries: int = Field(4, ge=0, description="retries of a 429 or 5xx answer before the job is retried later (code vl.server_busy)")
    backoff_base_s: float = Field(0.5, ge=0, description="first retry delay (doubles each retry) when the server sends no Retry-After")
    backoff_max_s: float = Field(30.0, ge=0, description="longest retry delay, Retry-After included")
    extra_body: dict[str, Any] = Field({}, description="per-provider extras merged into every request body, JSON (e.g. {\"top_k\": 1} or vLLM's {\"structured_outputs\": {...}})")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        return value.rstrip("/")


class VLSettings(Section):
    backend: str = Field("qwen", description="VL backend name: qwen (in process) or openai (an OpenAI-compatible server, vl.openai.*; the judge uses it too)")
    batch_size: int = Field(4, ge=1, description="item sets per generate call")
    device: Device = Field("auto", description="device the model runs on")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto is bfloat16 on CUDA, float32 on CPU")
    quantization: Literal["none", "4bit", "8bit"] = Field("none", description="bitsandbytes 4/8-bit loading (CUDA)")
    min_pixels: int = Field(128 * 28 * 28, gt=0, description="lower pixel budget per image for the vision tower")
    max_pixels: int = Field(768 * 28 * 28, gt=0, description="upper pixel budget per image for the vision tower")
    max_new_tokens: int = Field(1024, gt=0, description="token budget of one analysis")
    temperature: float = Field(0.0, ge=0, description="0 is greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling when temperature > 0")
    prompt_version: str = Field("v1", description="prompt template version (common/core/data/prompts/<recipe>.<version>.yaml)")
    min_confidence: float = Field(0.0, ge=0, le=1, description="analyses below this confidence are skipped, not edited")
    min_feasibility: Literal["low", "medium", "high"] = Field("low", description="analyses below this feasibility are skipped, not edited")
    adapter: str = Field("none", description="LoRA adapter of the VL model: an adapter id, latest (newest vl adapter) or none")
    openai: VLOpenAISettings = VLOpenAISettings()

    @field_validator("adapter")
    @classmethod
    def _adapter_choice(cls, value: str) -> str:
        return _check_adapter(value)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:

        return _check_name(value, VL_BACKENDS, "VL backend")

    @field_validator("prompt_version")
    @classmethod
    def _templates_exist(cls, value: str) -> str:

        missing = [r for r in RECIPES if not (PROMPTS_DIR / f"{r}.{value}.yaml").is_file()]
        if missing:
            have = sorted({p.name.split(".")[1] for p in PROMPTS_DIR.glob("*.yaml")})
            raise ValueError(f"no {'/'.join(missing)} prompt template for this version; have: {', '.join(have)}")
        return value


class EditSettings(Section):
    backend: str = Field("instruct-pix2pix", description="edit backend for both recipes unless backend_tryon/backend_enrich say otherwise")
    backend_tryon: str | None = Field(None, description="backend for the tryon recipe (default: backend)")
    backend_enrich: str | None = Field(None, description="backend for the enrich recipe (default: backend)")
    plus_model: str = Field("Qwen/Qwen-Image-Edit-2509", description="checkpoint of the multi-image editor")
    plus_steps: int = Field(40, ge=1, description="steps for the multi-image editor")
    plus_guidance_scale: float = Field(4.0, ge=0, description="true CFG scale for the multi-image editor")
    plus_vae_image_area: int | None = Field(None, gt=0, description="pixels the multi-image editor resizes reference images to for its VAE (default: the pipeline's 1024*1024)")
    plus_condition_image_area: int | None = Field(None, gt=0, description="pixels it resizes them to for its text encoder (default: the pipeline's 384*384)")
    kontext_model: str = Field("black-forest-labs/FLUX.1-Kontext-dev", description="checkpoint of the flux-kontext editor (hub id or local directory)")
    kontext_steps: int = Field(28, ge=1, description="denoising steps (flux-kontext)")
    kontext_guidance_scale: float = Field(2.5, ge=0, description="distilled guidance (flux-kontext)")
    kontext_true_cfg_scale: float = Field(1.0, ge=1, description="true CFG with the negative prompt when above 1 (flux-kontext; doubles the cost)")
    kontext_max_sequence_length: int = Field(512, ge=1, le=512, description="T5 prompt tokens (flux-kontext)")
    kontext_auto_resize: bool = Field(False, description="snap the reference image to Kontext's preferred resolutions instead of the output size")
    kontext_lora_path: Path | None = Field(None, description="folder of a LoRA adapter (save_lora_weights layout, e.g. a synthpipe adapter) loaded into flux-kontext")
    kontext_lora_scale: float = Field(1.0, ge=0, description="weight of that LoRA")
    kontext_adapter: str = Field("none", description="character LoRA (adapters table) loaded into flux-kontext: an adapter id, latest (newest character adapter) or none; a job's own adapter wins")
    batch_size: int = Field(4, ge=1, description="edits per pipeline call")
    device: Device = Field("auto", description="device the model runs on")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto is bfloat16 on CUDA, float32 on CPU")
    steps: int = Field(20, ge=1, description="denoising steps (InstructPix2Pix)")
    guidance_scale: float = Field(7.5, ge=0, description="text guidance (InstructPix2Pix)")
    image_guidance_scale: float = Field(1.5, ge=0, description="image guidance (InstructPix2Pix)")
    scheduler: str = Field("euler_ancestral", description="InstructPix2Pix scheduler")
    max_side: int = Field(512, ge=64, description="longest output side in pixels (multiple of 8)")
    negative_prompt: str | None = Field(None, description="negative prompt for every edit")
    adapter: str = Field("none", description="LoRA adapter of the InstructPix2Pix UNet: an adapter id, latest (newest edit adapter) or none")
    plus_adapter: str = Field("none", description="LoRA adapter of the Qwen-Image-Edit Plus transformer (train edit-plus): an adapter id, latest (newest edit-plus adapter) or none")
    candidates: int = Field(1, ge=1, le=32, description="best-of-N: candidate edits per analysed set, each its own edit job with its own key, seed and backend; the selection step keeps the best (default: 1, or the ensemble's length when edit.ensemble is set)")
    ensemble: CommaList = Field([], description="best-of-N: edit backends the candidates take in turn (candidate k uses entry k mod length), comma-separated; empty: every candidate uses the recipe's backend with its own seed")
    select_by: str = Field("judge.judge_overall", description="best-of-N: the metric (scorer.metric; a leading - when lower is better) that ranks candidates after acceptance, ties broken by margin; margin ranks by margin alone")
    early_stop_margin: float | None = Field(None, ge=0, description="best-of-N: make candidate 0 first and stop making a set's candidates once one is accepted with a margin at least this (0-1 scale; queued siblings are cancelled as edit.early_stop); unset: all N are made at once")
    serve_backends: CommaList = Field([], description="the backends this process's edit stage serves (synthpipe worker edit --backends): a worker then consumes only their queues (edit.<backend>) and claims only jobs that name one of them; empty: every edit job")
    candidates_max_per_run: int | None = Field(None, ge=0, description="best-of-N: most extra candidates (beyond each set's first) one producer process plans: one `synthpipe run`, or one vl worker process from its start; sets past it get one candidate; unset: no bound")

    @field_validator("adapter", "kontext_adapter", "plus_adapter")
    @classmethod
    def _adapter_choice(cls, value: str) -> str:
        return _check_adapter(value)

    @field_validator("backend", "backend_tryon", "backend_enrich")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:

        return None if value is None else _check_name(value, EDIT_BACKENDS, "edit backend")

    @field_validator("ensemble", "serve_backends")
    @classmethod
    def _known_ensemble(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in EDIT_BACKENDS]
        if unknown:
            raise ValueError(f"unknown edit backend(s) {', '.join(unknown)}; allowed: {', '.join(sorted(EDIT_BACKENDS))}")
        return value

    @field_validator("select_by")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value == "margin":
            return value
        scorer, dot, metric = value.removeprefix("-").partition(".")
        if not dot or not metric or scorer not in SCORERS:
            raise ValueError(f"must be margin or scorer.metric (a leading - when lower is better), scorer one of "
                             f"{', '.join(sorted(SCORERS))}, e.g. judge.judge_overall or -identity.identity_distance")
        return value

    @model_validator(mode="after")
    def _candidates_default_to_the_ensemble(self) -> EditSettings:
        if self.ensemble and "candidates" not in self.model_fields_set:
            object.__setattr__(self, "candidates", len(self.ensemble))
        return self

    def backends_used(self) -> set[str]:
        """Every edit backend these settings can send an edit to (both recipes and the ensemble)."""
        return {self.backend_tryon or self.backend, self.backend_enrich or self.backend, *self.ensemble}

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:

        return _check_name(value, SCHEDULERS, "InstructPix2Pix scheduler")


class GenerateSettings(Section):
    model: str = Field("black-forest-labs/FLUX.1-dev", description="text-to-image FLUX checkpoint (FLUX.1-schnell for speed: 4 steps, guidance 0, 256 tokens)")
    steps: int = Field(28, ge=1, description="denoising steps")
    guidance_scale: float = Field(3.5, ge=0, description="distilled guidance (FLUX.1-dev; schnell ignores it)")
    width: int = Field(1024, ge=16, description="image width in pixels (multiple of 16)")
    height: int = Field(1024, ge=16, description="image height in pixels (multiple of 16)")
    batch_size: int = Field(4, ge=1, description="images per pipeline call")
    device: Device = Field("auto", description="device the model runs on")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="auto is bfloat16 on CUDA, float32 on CPU")
    max_sequence_length: int = Field(512, ge=1, le=512, description="T5 prompt tokens")
    adapter: str = Field("latest", description="character adapter when --adapter is not given: an adapter id, latest (the newest for that character, none if it has none) or none")
    lora_scale: float = Field(1.0, ge=0, description="weight of the character LoRA")
    trigger_word: str = Field("sks", min_length=1, description="the character's token when no adapter names one")
    prompt_template: str = Field("a photo of {trigger} person, {setting}, {lighting}, {style} style, {season}", description="text prompt; {trigger} and the keyword file's context axes are filled in")
    phash_threshold: int | None = Field(4, ge=0, le=64, description="near-duplicate distance among the character's images from the same adapter (none: exact duplicates only)")
    identity_score: bool = Field(True, description="queue a score job (identity against the source photo) for every generated image")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError("must be a multiple of 16 (FLUX packs 8x-downsampled latents 2x2)")
        return value

    @field_validator("adapter")
    @classmethod
    def _adapter_choice(cls, value: str) -> str:
        if value not in ("latest", "none") and not value.isdigit():
            raise ValueError("must be an adapter id, latest or none")
        return value


class ScrapeSettings(Section):
    user_agent: str = Field("synthpipe-crawler/0.1 (+https://github.com/synthpipe/synthpipe)", description="User-Agent of pages, images and robots.txt requests")
    page_timeout_s: float = Field(30.0, gt=0, description="a page that takes longer fails with reason timeout")
    download_timeout_s: float = Field(30.0, gt=0, description="timeout of one image download (all its redirect hops), and of each read of robots.txt and sitemaps")
    fetch_deadline_s: float = Field(120.0, gt=0, description="total time one robots.txt, sitemap or image fetch may take, connecting to last byte, however slowly the server sends (code fetch.timeout)")
    max_image_bytes: int = Field(20_000_000, gt=0, description="larger downloads are cut off and refused")
    phash_threshold: int = Field(4, ge=0, le=64, description="Hamming distance that counts as a near duplicate")
    colour_tolerance: int = Field(24, ge=0, le=255, description="and the largest colour difference (0-255)")
    settle_s: float = Field(0.5, ge=0, description="wait after load for scripts and lazy images")
    chromium_path: Path = Field(Path("/usr/bin/chromium"), description="Chromium binary")
    chromedriver_path: Path = Field(Path("/usr/bin/chromedriver"), description="chromedriver binary")
    concurrency: int = Field(1, ge=1, le=64, description="sites crawled at once by one worker (one browser each); per-host politeness holds whatever it is")
    download_workers: int = Field(4, ge=1, le=64, description="image downloads in flight at once across hosts (one per host at a time)")
    max_redirects: int = Field(5, ge=0, description="redirect hops followed for one image")
    scroll_steps: int = Field(6, ge=0, description="viewport-high scroll steps on each page to trigger lazy loaders")
    max_images_per_page: int | None = Field(None, ge=1, description="images taken from one page (none: all)")
    max_crawl_seconds: float | None = Field(None, gt=0, description="per crawl batch (none: no limit)")
    robots_on_unreachable: Literal["deny", "allow"] = Field("deny", description="a host whose robots.txt cannot be read (5xx, timeout) is not crawled (deny) or crawled unrestricted (allow)")
    sitemaps: bool = Field(True, description="seed crawls from each site's sitemaps (robots.txt Sitemap: lines, else /sitemap.xml)")
    sitemap_max_urls: int = Field(5000, ge=0, description="page URLs taken from one site's sitemaps")
    sitemap_max_bytes: int = Field(50_000_000, ge=1, description="bytes read from one sitemap file (after gunzip)")
    sitemap_max_files: int = Field(20, ge=1, description="sitemap files (indexes included) read per site")
    skip_page_furniture: bool = Field(True, description="leave behind images inside nav/header/footer/menu landmarks, logos and icons, banner shapes and tiny rendered images (each counted by reason code)")
    banner_aspect: float = Field(3.0, gt=1, allow_inf_nan=False, description="an image this many times wider than tall (or taller than wide), as rendered, declared or downloaded, is a banner (image.banner_shape)")
    min_rendered_side: int = Field(40, ge=0, description="an image rendered with both sides set and its longer side under this (CSS px) is an icon (image.tiny_rendered), unless a width is declared for it")
    max_state_photos: int = Field(20, ge=0, description="photos named only in a page's inline state scripts (not shown in its markup) taken per page; their URLs always count as versions of photos the page shows (image.state_limit beyond)")
    head_for_size: bool = Field(True, description="versions of one photo that no declared width orders are ordered by the Content-Length of a HEAD request (one per version, in the host's politeness slot)")


class TrainSettings(Section):
    edit_rank: int = Field(4, ge=1, description="LoRA rank of the edit model's denoiser")
    edit_lr: float = Field(1e-4, gt=0, description="learning rate of edit LoRAs")
    edit_steps: int = Field(200, ge=1, description="optimizer steps of one edit train job")
    edit_resolution: int = Field(256, ge=16, description="training resolution of edit LoRAs (square, multiple of 8)")
    vl_rank: int = Field(8, ge=1, description="LoRA rank of the VL model")
    vl_lr: float = Field(1e-4, gt=0, description="learning rate of VL LoRAs")
    vl_steps: int = Field(100, ge=1, description="optimizer steps of one VL train job")
    vl_resolution: int = Field(448, ge=28, description="longest image side the VL trainer feeds the vision tower")
    vl_quantization: Literal["auto", "none", "4bit"] = Field("auto", description="QLoRA: auto is 4-bit (bitsandbytes) on CUDA, none on CPU")
    batch_size: int = Field(2, ge=1, description="examples per optimizer step")
    checkpoint_every: int = Field(25, ge=1, description="steps between resumable checkpoints")
    conditioning_dropout: float = Field(0.05, ge=0, le=1, description="edit LoRA: probability of dropping the text, the image, or both (classifier-free guidance)")
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass (CUDA)")
    optimizer: Literal["auto", "adamw", "adamw8bit"] = Field("auto", description="auto is 8-bit AdamW (bitsandbytes) on CUDA, AdamW on CPU")
    device: Device = Field("auto", description="device train jobs run on")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description="auto is bfloat16 on CUDA, float32 on CPU")
    seed: int = Field(0, ge=0, description="seed of LoRA initialisation, example order and noise")
    eval_seed: int = Field(1234, ge=0, description="flywheel: seed that picks the held-out item sets")
    min_eval_items: int = Field(10, ge=1, description="flywheel: paired held-out items a comparison needs before a round is called better or worse (fewer: not enough evidence)")
    character_rank: int = Field(16, ge=1, description="LoRA rank of the FLUX transformer (train character)")
    character_lr: float = Field(1e-4, gt=0, description="learning rate of character LoRAs")
    character_steps: int = Field(500, ge=1, description="optimizer steps of one character train job")
    character_resolution: int = Field(512, ge=16, description="training resolution of character LoRAs (square, multiple of 16)")


class ScoreThresholds(Section):
    """Thresholds of one recipe; a threshold applies only to a metric that was computed, and
    unset (None) turns it off. Defaults follow InstructPix2Pix (CLIP), UltraEdit (DINOv2, SSIM)
    and dlib (identity)."""

    clip_image_min: float | None = Field(0.7, description="CLIP image-image cosine, input vs edit (code clip_image_low)")
    clip_direction_min: float | None = Field(0.2, description="CLIP directional similarity (code clip_direction_low)")
    clip_text_min: float | None = Field(0.2, description="CLIP edit image vs instruction cosine (code clip_text_low)")
    dino_min: float | None = Field(0.4, description="DINOv2 CLS cosine, input vs edit (code dino_low)")
    garment_min: float | None = Field(0.3, description="best garment similarity of the edited clothing (code garment_low)")
    ssim_max: float | None = Field(None, description="plain SSIM upper bound (code ssim_too_high); off: it would reject relit photos, no_change covers unchanged edits")
    ssim_min: float | None = Field(None, description="SSIM lower bound against edits that changed everything (code ssim_too_low)")
    mad_max: float | None = Field(None, description="colour mean absolute difference upper bound, 0-1 (code change_too_large)")
    no_change_ssim: float | None = Field(0.98, description="no_change: SSIM at or above this and ...")
    no_change_mad: float | None = Field(0.01, description="... colour mean absolute difference (0-1) at or below this")
    identity_max: float | None = Field(0.6, description="largest dlib face descriptor distance input vs edit (code identity_lost)")
    judge_min: float | None = Field(7.0, description="lowest judge overall score, 0-10 (code judge_low)")


class EnrichThresholds(ScoreThresholds):
    """Enrich (one character photo, relit or restaged): as try-on, with no garment to match."""

    garment_min: float | None = Field(None, description="no garment photos in enrich sets")


class ScoreSettings(Section):
    scorers: CommaList = Field(["change", "identity", "clip", "dino", "garment"], description="scorers every edit gets, comma-separated (change, identity, clip, dino, garment, judge)")
    batch_size: int = Field(8, ge=1, description="edits per score batch (one forward pass per scorer)")
    device: Device = Field("auto", description="device the scorer models run on")
    clip_model: str = Field("openai/clip-vit-large-patch14", description="hub id or local directory of the CLIP checkpoint")
    clip_source_caption: str = Field("a photo", description="text the instruction is compared against for CLIP directional similarity (the input photo has no caption)")
    dino_model: str = Field("facebook/dinov2-base", description="hub id or local directory of the DINOv2 checkpoint")
    garment_model: str | None = Field(None, description="DINOv2 checkpoint of the garment scorer (default: dino_model)")
    judge_model: str | None = Field(None, description="Qwen-VL checkpoint of the judge (default: vl_model, sharing the VL stage's resident model; the judge runs with the vl.* device, dtype and pixel settings)")
    change_side: int = Field(256, ge=16, description="longest side both photos are resized to before MAD and SSIM")
    face_upsample: int = Field(1, ge=0, le=3, description="times dlib's HOG detector upsamples (finds smaller faces, slower)")
    face_max_side: int = Field(1024, ge=64, description="photos are shrunk to this longest side before face detection")
    tryon: ScoreThresholds = ScoreThresholds()
    enrich: EnrichThresholds = EnrichThresholds()

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, value: list[str]) -> list[str]:

        for name in value:
            _check_name(name, SCORERS, f"scorer {name!r}")
        if len(set(value)) != len(value):
            raise ValueError("names a scorer twice")
        return value

    def thresholds_for(self, recipe: str) -> dict[str, float | None]:
        """The thresholds of ``recipe`` (try-on's for a recipe without its own)."""
        section = self.enrich if recipe == "enrich" else self.tryon
        return section.model_dump()


class ModelSettings(Section):
    exclusive_per_device: bool | None = Field(None, description="hold one model per device at a time (unload the VL model before loading the editor); default: on for one card, off on CPU")


class CelerySettings(Section):
    soft_time_limit_s: float = Field(1800.0, gt=0, description="a task is asked to stop after this")
    time_limit_s: float = Field(2100.0, gt=0, description="a task is killed after this")
    visibility_timeout_s: float = Field(7200.0, gt=0, description="Redis redelivers unacked messages after this")
    sweep_interval_s: float = Field(30.0, gt=0, description="how often a worker returns expired leases and resends lost messages")
    resend_after_s: float = Field(120.0, gt=0, description="a queued job untouched this long gets its message sent again")
    broker_ca_file: FilePath | None = Field(None, description="CA certificate that signed a rediss:// broker's certificate (self-signed; default: the system's authorities)")
    allow_insecure_broker: bool = Field(False, description="allow a broker on another machine without TLS or a password (a network you trust)")


class FlowerSettings(Section):
    port: int = Field(5555, ge=1, le=65535, description="Flower's port")
    address: str = Field("127.0.0.1", description="Flower's bind address")
    basic_auth: str | None = Field(None, description="user:password")


class DatabaseSettings(Section):
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(None, description="PostgreSQL sslmode when database_url has none (verify-full checks the server's name)")
    ca_file: FilePath | None = Field(None, description="CA certificate for sslmode verify-ca/verify-full when database_url has no sslrootcert")
    allow_insecure: bool = Field(False, description="allow a database on another machine without TLS (a network you trust)")


class StorageSettings(Section):
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph...; default: AWS_ENDPOINT_URL or AWS)")
    s3_region: str | None = Field(None, description="S3 region (default: AWS_DEFAULT_REGION / AWS_REGION)")
    s3_access_key_id: str | None = Field(None, description="S3 access key (default: AWS_ACCESS_KEY_ID, profiles, instance roles)")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (default: AWS_SECRET_ACCESS_KEY)")


class MetricsSettings(Section):
    port: int = Field(9464, ge=1, le=65535, description="port of `synthpipe metrics` (store and broker gauges)")
    address: str = Field("127.0.0.1", description="bind address of `synthpipe metrics` and of every worker's --metrics-port")
    multiproc_dir: Path | None = Field(None, description="where prefork workers keep per-process metric files (default: the system temp directory)")
    gpu: bool = Field(True, description="report GPU memory and utilisation through NVML when a card is there")


REVIEW_TAG_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class ReviewSettings(Section):
    host: str = Field("127.0.0.1", description="address the review page binds (a non-loopback one needs --public)")
    port: int = Field(8765, ge=1, le=65535, description="port of the review page")
    required: int = Field(1, ge=1, description="reviewers who decide each edit before it leaves the queue")
    tags: CommaList = Field(["identity_lost", "wrong_garment", "artifacts", "instruction_not_followed", "unsafe",
                             "pose_changed", "background_changed", "low_quality", "other"],
                            min_length=1, max_length=9, description="reason tags a reviewer toggles with keys 1-9, comma-separated (codes: a-z, 0-9, _)")
    page_size: int = Field(20, ge=1, le=200, description="items on one queue page")
    session_ttl_s: float = Field(12 * 3600.0, gt=0, description="a login lasts this long")
    login_free_failures: int = Field(5, ge=1, description="failed logins per name or address (within login_window_s) before each further try must wait")
    login_window_s: float = Field(900.0, gt=0, description="failed logins older than this are forgotten")
    login_backoff_s: float = Field(2.0, gt=0, description="the first wait after login_free_failures; doubles with each further failure")
    login_backoff_max_s: float = Field(300.0, gt=0, description="longest wait between login tries")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body the review page takes (bytes); a larger one is refused with 413 before it is read")

    @field_validator("tags")
    @classmethod
    def _tag_codes(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if not REVIEW_TAG_RE.fullmatch(t)]
        if bad:
            raise ValueError(f"tags are codes (lower-case letters, digits, _): {', '.join(map(repr, bad))}")
        if len(set(value)) != len(value):
            raise ValueError("tags must be distinct")
        return value


class Settings(BaseSettings):
    """Everything synthpipe reads from its environment. Validated once, at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(Path("synthpipe-data"), description="where the embedded defaults (SQLite file, objects) live")
    database_url: str | None = Field(None, description="any SQLAlchemy URL (default: SQLite under data_dir); postgresql+psycopg://… for distributed mode")
    storage_url: str | None = Field(None, description="any fsspec URL (default: data_dir/objects); s3://bucket/prefix needs the s3 extra")
    broker_url: str | None = Field(None, description="setting it (redis://…) turns distributed mode on")
    vl_model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="hub id or local directory of the Qwen-VL checkpoint")
    edit_model: str = Field("timbrooks/instruct-pix2pix", description="hub id or local directory of the InstructPix2Pix checkpoint")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level of every command")
    plugins: CommaList = Field([], description="modules imported at start-up that register extra stages (common.core.stages.register), comma-separated")

    jobs: JobSettings = JobSettings()
    images: ImageSettings = ImageSettings()
    imports: ImportSettings = ImportSettings()
    pairing: PairingSettings = PairingSettings()
    vl: VLSettings = VLSettings()
    edit: EditSettings = EditSettings()
    generate: GenerateSettings = GenerateSettings()
    scrape: ScrapeSettings = ScrapeSettings()
    train: TrainSettings = TrainSettings()
    score: ScoreSettings = ScoreSettings()
    models: ModelSettings = ModelSettings()
    celery: CelerySettings = CelerySettings()
    flower: FlowerSettings = FlowerSettings()
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    metrics: MetricsSettings = MetricsSettings()
    review: ReviewSettings = ReviewSettings()

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        data_dir = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'synthpipe.db'}")
        if not self.storage_url:
            object.__setattr__(self, "storage_url", (data_dir / "objects").as_uri())
        if self.celery.visibility_timeout_s <= self.celery.time_limit_s:
            raise ValueError("celery.visibility_timeout_s must exceed celery.time_limit_s, or Redis "
                             "redelivers a task that is still running")
        if self.celery.soft_time_limit_s >= self.celery.time_limit_s:
            raise ValueError("celery.soft_time_limit_s must be below celery.time_limit_s")
        plus = "qwen-image-edit-plus"
        if plus in (self.edit.backend, self.edit.backend_tryon, *self.edit.ensemble) and self.pairing.max_garments > 2:
            raise ValueError(f"edit backend {plus} takes at most 2 garment photos besides the person: "
                             "set pairing.max_garments (SYNTHPIPE_PAIRING__MAX_GARMENTS) to 1 or 2")

        if self.edit.candidates < len(self.edit.ensemble):
            raise ValueError(f"edit.candidates (SYNTHPIPE_EDIT__CANDIDATES) is {self.edit.candidates}, fewer than the "
                             f"{len(self.edit.ensemble)} backends of edit.ensemble: raise it, or shorten the ensemble")
        p2p_used = "instruct-pix2pix" in self.edit.backends_used()
        if p2p_used and self.edit.steps < MIN_STEPS.get(self.edit.scheduler, 1):
            raise ValueError(f"edit.steps (SYNTHPIPE_EDIT__STEPS) must be at least {MIN_STEPS[self.edit.scheduler]} "
                             f"with edit.scheduler {self.edit.scheduler}")
        if self.vl.min_pixels > self.vl.max_pixels:
            raise ValueError("vl.min_pixels must not exceed vl.max_pixels")
        self._keywords_fill_the_prompts()
        self._shared_services_are_safe()
        return self

    def _shared_services_are_safe(self) -> None:
        """A broker or database on another machine needs TLS, and the broker a password
        (common/core/security.py); decided from the URLs alone, before anything connects."""

        if self.broker_url and not self.celery.allow_insecure_broker:
            problem = security.broker_problem(self.broker_url)
            if problem:
                raise ValueError(problem)
        if self.celery.broker_ca_file is not None and not (
                self.broker_url and security.broker_uses_tls(self.broker_url)):
            raise ValueError("celery.broker_ca_file (SYNTHPIPE_CELERY__BROKER_CA_FILE) is set but broker_url is "
                             "not a TLS URL (rediss://...)")
        if self.database_url:  # unusable whatever the network: a bad port, an unknown driver
            problem = security.database_url_problem(self.database_url)
            if problem:
                raise ValueError(problem)
        if self.database_url and not self.database.allow_insecure:
            problem = security.database_problem(self.database_url, self.database.sslmode)
            if problem:
                raise ValueError(problem)

    def _keywords_fill_the_prompts(self) -> None:
        """Every placeholder of the VL prompt templates must come from the keyword file's axes
        (or the image counts), or every vl job would fail on the same missing value."""

        kw = load_keywords(self.pairing.keywords_file)  # ConfigError names the file and key
        provided = {"tryon": set(kw.context), "enrich": set(kw.context) | set(kw.enrich)}
        for recipe in RECIPES:
            template = load_template(recipe, self.vl.prompt_version)
            needed = {name for _, name, _, _ in string.Formatter().parse(template.user) if name}
            missing = sorted(needed - provided[recipe] - {"n_images", "n_garments"})
            if missing:
                where = self.pairing.keywords_file or "the shipped keyword file"
                raise ValueError(
                    f"pairing.keywords_file ({ENV_PREFIX}PAIRING__KEYWORDS_FILE): {where} has no axis "
                    f"{', '.join(map(repr, missing))}, which prompt {recipe}.{self.vl.prompt_version} needs")

    @property
    def distributed(self) -> bool:
        """Distributed mode (Celery on a broker) is on when a broker URL is set."""
        return bool(self.broker_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _toml_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


def _known_variables() -> list[str]:
    """Every ``SYNTHPIPE_*`` variable that names a setting (sections' keys included)."""
    names = []
    for name, f in Settings.model_fields.items():
        names.append(ENV_PREFIX + name.upper())
        if isinstance(f.default, BaseModel):
            names += [f"{ENV_PREFIX}{name.upper()}__{sub.upper()}" for sub in type(f.default).model_fields]
    return names


def _did_you_mean(var: str) -> str:
    close = difflib.get_close_matches(var.upper(), _known_variables(), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _toml_path() -> Path:
    return Path(os.environ.get(TOML_FILE_ENV, "synthpipe.toml"))


def _key_name(loc: tuple[Any, ...]) -> str:
    """Where the bad value came from: the variable when it is set, else the toml file's key."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    env = ENV_PREFIX + "__".join(p.upper() for p in parts)
    dotted = ".".join(parts)
    if env not in {k.upper() for k in os.environ} and _toml_path().is_file():
        table = f"[{parts[0]}] {'.'.join(parts[1:])}" if len(parts) > 1 else parts[0]
        return f"{_toml_path()}: {table}"
    return f"{dotted} ({env})"


def _unknown_variables() -> list[str]:
    """``SYNTHPIPE_*`` variables that name no setting: a typo would otherwise fall back to a
    default without a word (``SYNTHPIPE_DATABSE_URL`` -> SQLite)."""
    top = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    sections = {ENV_PREFIX + name.upper() + "__" for name, f in Settings.model_fields.items()
                if isinstance(f.default, BaseModel)}
    unknown = []
    for var in os.environ:
        name = var.upper()
        if name in NOT_SETTINGS and var != name:  # read case-sensitively: another casing is ignored
            unknown.append(var)
            continue
        if (not name.startswith(ENV_PREFIX) or name in top or name in NOT_SETTINGS
                or name.startswith(NOT_SETTINGS_PREFIXES) or name.startswith(tuple(sections))):
            continue  # nested keys are checked by the sections themselves (extra="forbid")
        unknown.append(var)
    return sorted(unknown)


def load_settings(**overrides: Any) -> Settings:
    """Build and validate settings; an invalid value raises ``ConfigError`` naming the key."""
    unknown = _unknown_variables()
    if unknown:
        raise ConfigError("invalid settings: " + "; ".join(
            f"{var}: unknown setting{_did_you_mean(var)}" for var in unknown) + " (see docs/SETTINGS.md)")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                loc = tuple(err["loc"])
                var = ENV_PREFIX + "__".join(str(p).upper() for p in loc if not isinstance(p, int))
                where = _key_name(loc)
                hint = _did_you_mean(var)
                if hint and where.startswith(str(_toml_path())):  # suggest the toml key, not the variable
                    parts = hint.removeprefix(" (did you mean ").removesuffix("?)")[len(ENV_PREFIX):].lower().split("__")
                    hint = f" (did you mean [{parts[0]}] {'.'.join(parts[1:])}?)" if len(parts) > 1 else f" (did you mean {parts[0]}?)"
                lines.append(f"{where}: unknown setting{hint}")
                continue
            if err["type"] in ("literal_error", "enum") and "expected" in err.get("ctx", {}):
                msg = f"must be one of {err['ctx']['expected']}"
            if not err["loc"]:  # a rule across several settings: its message names them
                lines.append(msg.removeprefix("Value error, "))
                continue
            msg = msg.removeprefix("Value error, ")
            lines.append(f"{_key_name(tuple(err['loc']))}: {msg} (got {err.get('input')!r})")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None
    except ValueError as exc:  # e.g. a synthpipe.toml that is not TOML
        raise ConfigError(f"invalid settings: {_toml_path()}: {exc}") from None


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


def reset_settings() -> None:
    """Forget cached settings (after the environment changed, e.g. in tests)."""
    get_settings.cache_clear()
