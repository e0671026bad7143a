# The training job image: the servekit CLI with the training jobs and
# TensorFlow (CPU). It publishes new versions into the registry volume.
#   docker build -f deploy/docker/trainer.Dockerfile -t servekit/trainer:<tag> .
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.14-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY services/protocol/pyproject.toml services/protocol/
COPY services/modelregistry/pyproject.toml services/modelregistry/
COPY services/modelserver/pyproject.toml services/modelserver/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/cli/pyproject.toml services/cli/
COPY training/pyproject.toml training/
RUN uv sync --frozen --no-dev --no-install-workspace \
        --package servekit --package servekit-training --extra tf
COPY services/ services/
COPY training/ training/
RUN uv sync --frozen --no-dev --no-editable \
        --package servekit --package servekit-training --extra tf

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 servekit \
    && useradd --system --uid 10001 --gid servekit --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin servekit
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    SERVEKIT_REGISTRY=/models
USER 10001:10001
WORKDIR /tmp
# A batch job: it runs to completion and exits, so there is nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["servekit"]
CMD ["train", "--help"]
