# One image for every synthpipe service; the command picks the role.
#   docker build -t synthpipe .                         (CUDA torch from PyPI's default build)
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" -t synthpipe .
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 SE_OFFLINE=true \
    SYNTHPIPE_DATA_DIR=/data HF_HOME=/models/hf

RUN apt-get update \
 && apt-get install -y --no-install-recommends chromium chromium-driver postgresql-client \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, pinned: a later unpinned requirement must not pick another build
RUN pip install --no-cache-dir "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY common ./common
COPY worker_scrape ./worker_scrape
COPY worker_vl ./worker_vl
COPY worker_edit ./worker_edit
COPY migrations ./migrations
RUN pip install --no-cache-dir ".[s3]"

RUN useradd --create-home --uid 1000 synthpipe && mkdir -p /data /models && chown synthpipe /data /models
USER synthpipe
ENTRYPOINT ["synthpipe"]
CMD ["--help"]
