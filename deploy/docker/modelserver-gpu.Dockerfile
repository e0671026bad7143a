# The servekit model server image for GPU nodes: TensorFlow with the CUDA and
# cuDNN libraries from PyPI (tensorflow[and-cuda]), so no CUDA base image is
# needed; the node only has to provide the NVIDIA driver.
#   docker build -f deploy/docker/modelserver-gpu.Dockerfile -t servekit/modelserver-gpu:<tag> .
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
# The CUDA wheels are an extra of tensorflow itself, outside the lock file;
# pinning tensorflow to the locked version keeps the two consistent.
RUN uv sync --frozen --no-dev --no-install-workspace --package servekit-modelserver --extra tf \
    && uv pip install --python /opt/venv/bin/python "tensorflow[and-cuda]==2.21.0"
COPY services/ services/
COPY training/ training/
RUN uv sync --frozen --no-dev --no-editable --inexact --package servekit-modelserver --extra tf

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 servekit \
    && useradd --system --uid 10001 --gid servekit --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin servekit
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8500 8501
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/v2/health/ready', timeout=2)"]
ENTRYPOINT ["servekit-model-server"]
CMD ["--port=8500", "--rest_api_port=8501", \
     "--model_config_file=/models/servekit.config", \
     "--model_config_file_poll_wait_seconds=10", \
     "--file_system_poll_wait_seconds=5"]
