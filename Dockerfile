# Two images from one file; the command picks the role.
#   docker build --target scrape -t synthpipe-scrape .   crawler + producer commands, no torch (small)
#   docker build --target gpu -t synthpipe .              model workers (vl, edit, score, train, generate)
#   docker build --target gpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t synthpipe .
FROM python:3.11-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 SE_OFFLINE=true \
    SYNTHPIPE_DATA_DIR=/data HF_HOME=/models/hf
RUN useradd --create-home --uid 1000 synthpipe && mkdir -p /data /models && chown synthpipe /data /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY worker_scrape ./worker_scrape
COPY worker_vl ./worker_vl
COPY worker_edit ./worker_edit
COPY worker_score ./worker_score
COPY worker_train ./worker_train
COPY worker_generate ./worker_generate
COPY migrations ./migrations

# The crawler's image: Chromium, the scrape and distributed extras; no torch, no models.
FROM base AS scrape
RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium chromium-driver postgresql-client \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir ".[scrape,distributed,s3]"
USER synthpipe
ENTRYPOINT ["synthpipe"]
CMD ["--help"]

# The model workers' image: torch first and pinned (a later unpinned requirement must not pick
# another build), then every extra.
FROM base AS gpu
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium chromium-driver postgresql-client \
 && rm -rf /var/lib/apt/lists/*
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else pip install --no-cache-dir "$TORCH_SPEC"; fi
RUN pip install --no-cache-dir ".[all]"
USER synthpipe
ENTRYPOINT ["synthpipe"]
CMD ["--help"]
