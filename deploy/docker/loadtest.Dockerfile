# The load-test image: Locust with servekit's users (tests/load/) baked in, for
# the compose `loadtest` profile and the Kubernetes master/worker pair.
#   docker build -f deploy/docker/loadtest.Dockerfile -t servekit/loadtest:<tag> .
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
RUN uv sync --frozen --no-dev --no-install-workspace --package servekit --package servekit-protocol --extra loadtest
COPY services/ services/
COPY training/ training/
RUN uv sync --frozen --no-dev --no-editable --package servekit --package servekit-protocol --extra loadtest

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 servekit \
    && useradd --system --uid 10001 --gid servekit --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin servekit
COPY --from=build /opt/venv /opt/venv
# The users live at tests/load/ as in the repository, so both `import shapes`
# (Locust puts the locustfile's folder on sys.path) and `tests.load.*` imports work.
COPY tests/__init__.py /opt/servekit/tests/__init__.py
COPY tests/load/ /opt/servekit/tests/load/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/servekit \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp
USER 10001:10001
WORKDIR /opt/servekit
# 8089: web UI and HTTP API of the master; 5557: master <-> worker traffic.
EXPOSE 8089 5557
# Workers and headless masters serve no endpoint to probe: the run's own exit
# code is the verdict (SLO gates set it), so no health check.
HEALTHCHECK NONE
ENTRYPOINT ["locust", "-f", "/opt/servekit/tests/load/locustfile.py"]
