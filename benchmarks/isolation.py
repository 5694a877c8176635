"""Benchmarks run apart from the caller's synthpipe: own data dir, database, storage, no settings file.

A benchmark must never write into the store a user has configured, nor read its settings: a
``SYNTHPIPE_DATABASE_URL`` or ``SYNTHPIPE_STORAGE_URL`` in the caller's environment, or a
``synthpipe.toml`` in the working directory, would otherwise send a benchmark's jobs into the
user's database (and leave the benchmark looking for them in its own folder).

- :func:`isolate` does it for this process: every ``SYNTHPIPE_*`` setting of the caller is
  dropped, ``SYNTHPIPE_DATA_DIR`` (hence the SQLite file and the object store) points at a fresh
  temporary folder (removed at exit), and ``SYNTHPIPE_CONFIG`` at a file that does not exist, so
  no ``synthpipe.toml`` is read.
- :func:`clean_env` is the same for a child process's environment.

``SYNTHPIPE_BENCH_*`` variables are the benchmarks' own hooks (not settings) and stay.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

PREFIX = "SYNTHPIPE_"
KEEP = ("SYNTHPIPE_BENCH_",)  #: benchmark hooks (a Python, a wheel folder, a PostgreSQL URL), not settings
NO_CONFIG = "no-synthpipe.toml"  #: SYNTHPIPE_CONFIG points at this name in the benchmark's folder; never written


def clean_env(base: Mapping[str, str] | None = None, data_dir: Path | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without the caller's ``SYNTHPIPE_*``
    settings; with ``data_dir``, settings pointed at that folder and no settings file."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.upper().startswith(PREFIX) or k.upper().startswith(KEEP)}
    if data_dir is not None:
        env["SYNTHPIPE_DATA_DIR"] = str(data_dir)
        env["SYNTHPIPE_CONFIG"] = str(data_dir / NO_CONFIG)
    return env


def isolate(prefix: str = "bench-") -> Path:
    """Point this process's settings at a fresh temporary data dir (removed at exit) and away
    from the caller's; returns the folder. Call it before settings are first read."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, data_dir, True)
    env = clean_env(data_dir=data_dir)
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    os.environ.update(env)
    if "common.core.settings" in sys.modules:  # settings read before isolation are forgotten
        from common.core.settings import reset_settings

        reset_settings()
    if "common.store.db" in sys.modules:
        from common.store.db import reset_databases

        reset_databases()
    return data_dir
