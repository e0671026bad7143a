# The servekit model server image for CPU nodes.
# By default it hosts scikit-learn pipelines only (no TensorFlow in the image);
# build with --build-arg MODELSERVER_EXTRAS=tf to host SavedModels on CPU too.
#   docker build -f deploy/docker/modelserver.Dockerfile -t servekit/modelserver:<tag> .
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.14-slim-bookworm AS build
ARG MODELSERVER_EXTRAS=""
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
# One "--extra NAME" per word of MODELSERVER_EXTRAS; word splitting is wanted here.
# hadolint ignore=SC2046
RUN uv sync --frozen --no-dev --no-install-workspace --package servekit-modelserver \
        $(for extra in ${MODELSERVER_EXTRAS}; do printf ' --extra %s' "$extra"; done)
COPY services/ services/
COPY training/ training/
# hadolint ignore=SC2046
RUN uv sync --frozen --no-dev --no-editable --package servekit-modelserver \
        $(for extra in ${MODELSERVER_EXTRAS}; do printf ' --extra %s' "$extra"; done)

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 servekit \
    && useradd --system --uid 10001 --gid servekit --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin servekit
COPY --from=build /opt/venv /opt/venv
# HOME points at /tmp because the root filesystem is read-only in the cluster
# and libraries (joblib, TensorFlow) look for a writable home.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/v2/health/ready', timeout=2)"]
ENTRYPOINT ["servekit-model-server"]
CMD ["--port=8500", "--rest_api_port=8501", \
     "--model_config_file=/models/sklearn.config", \
     "--model_config_file_poll_wait_seconds=10", \
     "--file_system_poll_wait_seconds=5"]
