# The gateway image: FastAPI front door, no TensorFlow (small image, fast start).
# Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t servekit/gateway:<tag> .
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.14-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first, from the lock file only, so code edits reuse this layer.
COPY pyproject.toml uv.lock ./
COPY services/protocol/pyproject.toml services/protocol/
COPY services/modelregistry/pyproject.toml services/modelregistry/
COPY services/modelserver/pyproject.toml services/modelserver/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/cli/pyproject.toml services/cli/
COPY training/pyproject.toml training/
RUN uv sync --frozen --no-dev --no-install-workspace --package servekit-gateway
COPY services/ services/
COPY training/ training/
RUN uv sync --frozen --no-dev --no-editable --package servekit-gateway

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 servekit \
    && useradd --system --uid 10001 --gid servekit --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin servekit
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["servekit-gateway"]
