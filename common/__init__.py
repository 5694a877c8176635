"""synthpipe's shared library: settings, job store, storage, image intake, CLI.

Nothing here imports torch, transformers, diffusers or selenium at import time.
"""

__version__ = "0.1.0"
