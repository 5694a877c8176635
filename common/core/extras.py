"""Which optional extra provides a missing module, so a missing dependency fails with the
install command that fixes it (``pip install 'synthpipe[gpu]'``) instead of a traceback."""

from __future__ import annotations

from common.core.errors import ConfigError

#: top-level module -> the extra of pyproject.toml that installs it
EXTRA_OF: dict[str, str] = {
    **dict.fromkeys(("torch", "transformers", "diffusers", "accelerate", "bitsandbytes", "xgrammar", "peft",
                     "safetensors", "tokenizers"), "gpu"),
    **dict.fromkeys(("dlib", "face_recognition_models", "skimage"), "score"),
    **dict.fromkeys(("selenium", "protego"), "scrape"),
    **dict.fromkeys(("celery", "kombu", "redis", "flower", "psycopg", "prometheus_client"), "distributed"),
    **dict.fromkeys(("fastapi", "uvicorn", "jinja2", "multipart", "python_multipart", "argon2", "sklearn",
                     "krippendorff"), "review"),
    "s3fs": "s3",
}


def missing_extra(exc: ModuleNotFoundError) -> ConfigError | None:
    """The settings error for a module that one of synthpipe's extras provides, else None."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return ConfigError(f"this needs the {top!r} package from the {extra!r} extra: "
                       f"pip install 'synthpipe[{extra}]' (or 'synthpipe[all]')", code="install.missing_extra")
