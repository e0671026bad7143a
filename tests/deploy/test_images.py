"""Image builds through the Docker SDK: the contexts and tags `servekit deploy build`
produces, what reaches a Docker engine's HTTP API, and the one-line error when no
engine answers.

There is no Docker engine on a development machine, so a small HTTP server on
127.0.0.1 plays the engine's API (ping, version, build, push) and records what
the real SDK sends it; the code under test is servekit's, unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import REPO_ROOT, SERVEKIT

images = pytest.importorskip("servekit.deploy.images")
from servekit.deploy.errors import DeployError, EngineUnavailable  # noqa: E402
from servekit.deploy.project import git_revision  # noqa: E402

API_VERSION = "1.45"


def run_servekit(
    *args: str, env: dict[str, str], installed: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `servekit ARGS` from the repository: through the installed console script,
    or in this process (the CLI's own entry point, without its start-up per call)."""
    if installed:
        return subprocess.run(
            [str(SERVEKIT), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO_ROOT,
            env={**os.environ, "COLUMNS": "200", **env},
            check=False,
        )
    cli = pytest.importorskip("servekit.__main__")
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.chdir(REPO_ROOT)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(list(args))
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


# ---- plans, tags and contexts ---------------------------------------------------------


def test_default_builds_are_the_images_the_manifests_use() -> None:
    plans = images.plan_builds([], "abc123")
    assert [plan.reference for plan in plans] == [
        "servekit/gateway:abc123",
        "servekit/modelserver:abc123",
        "servekit/trainer:abc123",
        "servekit/loadtest:abc123",
    ]
    manifests = (REPO_ROOT / "k8s" / "base" / "kustomization.yaml").read_text()
    for plan in plans[:3]:
        assert plan.reference.split(":")[0] in manifests


def test_tags_use_the_repository_and_the_revision() -> None:
    (plan,) = images.plan_builds(
        ["modelserver-tf"], "0f1e2d3c4b5a", "ghcr.io/acme/servekit", "0f1e2d3c4b5a"
    )
    assert plan.reference == "ghcr.io/acme/servekit/modelserver-tf:0f1e2d3c4b5a"
    assert plan.spec.build_args == {"MODELSERVER_EXTRAS": "tf"}
    assert plan.labels["org.opencontainers.image.revision"] == "0f1e2d3c4b5a"


@pytest.mark.parametrize(
    ("names", "tag", "message"),
    [
        (["gateway", "nope"], "t", "unknown image nope"),
        (["gateway"], "Not A Tag!", "not a valid image reference"),
    ],
)
def test_bad_names_and_tags_are_refused(
    names: list[str], tag: str, message: str
) -> None:
    with pytest.raises(DeployError, match=message):
        images.plan_builds(names, tag)


def test_every_image_has_its_dockerfile() -> None:
    for spec in images.IMAGES:
        assert (REPO_ROOT / spec.dockerfile).is_file(), spec.dockerfile


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_revision_is_the_commit_and_marks_uncommitted_changes(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "file.txt").write_text("one\n")
    _git(tmp_path, "add", "file.txt")
    _git(
        tmp_path,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "-q",
        "-m",
        "one",
    )
    sha = _git(tmp_path, "rev-parse", "HEAD")
    assert git_revision(tmp_path) == sha[:12]
    (tmp_path / "file.txt").write_text("two\n")
    assert git_revision(tmp_path) == sha[:12] + "-dirty"


def test_revision_outside_git_asks_for_a_tag(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="pass --tag"):
        git_revision(tmp_path)


@pytest.fixture(scope="module")
def gateway_context_members() -> list[str]:
    context = images.build_context(REPO_ROOT, "deploy/docker/gateway.Dockerfile")
    try:
        members: list[str] = images.context_members(context)
    finally:
        context.close()
    return members


def test_context_holds_what_the_images_install(
    gateway_context_members: list[str],
) -> None:
    members = set(gateway_context_members)
    for required in [
        "pyproject.toml",
        "uv.lock",
        "deploy/docker/gateway.Dockerfile",
        "services/gateway/pyproject.toml",
        "services/gateway/src/gateway/__init__.py",
        "services/modelregistry/src/modelregistry/registry.py",
        "training/pyproject.toml",
        "tests/__init__.py",
        "tests/load/locustfile.py",
    ]:
        assert required in members, required


def test_context_leaves_out_local_state_and_tests(
    gateway_context_members: list[str],
) -> None:
    for member in gateway_context_members:
        top = member.split("/")[0]
        assert top in {
            "pyproject.toml",
            "uv.lock",
            ".dockerignore",
            "deploy",
            "services",
            "training",
            "tests",
        }, member
        assert "__pycache__" not in member and not member.endswith(".pyc"), member
        assert not member.startswith(("models/", "k8s/", "tests/deploy/", ".venv/"))
        assert not member.startswith("deploy/config/"), "secrets and configs stay out"
        parts = member.split("/")
        assert not (parts[0] == "services" and len(parts) > 2 and parts[2] == "tests")


# ---- a stand-in for the Docker engine's HTTP API --------------------------------------


@dataclass
class EngineRecord:
    """What the SDK sent to the stand-in engine."""

    builds: list[dict[str, Any]] = field(default_factory=list)
    pushes: list[dict[str, Any]] = field(default_factory=list)
    fail_builds_with: str | None = None


def _engine_handler(record: EngineRecord) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Api-Version", API_VERSION)
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, chunks: list[dict[str, Any]]) -> None:
            # As the engine does: one JSON object per HTTP chunk, as progress happens.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Api-Version", API_VERSION)
            self.end_headers()
            for chunk in chunks:
                data = json.dumps(chunk).encode() + b"\r\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path.endswith("/_ping"):
                self._answer(200, b"OK", "text/plain")
            elif path.endswith("/version"):
                version = {"ApiVersion": API_VERSION, "Version": "stand-in"}
                self._answer(200, json.dumps(version).encode(), "application/json")
            else:
                self._answer(404, b'{"message": "not here"}', "application/json")

        def do_HEAD(self) -> None:
            self._answer(200, b"", "text/plain")

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            body = self._body()
            if url.path.endswith("/build"):
                record.builds.append({"query": query, "body": body})
                if record.fail_builds_with is not None:
                    self._stream(
                        [
                            {"stream": "Step 1/9 : FROM python"},
                            {"error": record.fail_builds_with},
                        ]
                    )
                    return
                self._stream(
                    [
                        {"stream": "Step 1/9 : FROM python\n"},
                        {"stream": " ---> Running in 0123\n"},
                        {"aux": {"ID": "sha256:" + "ab" * 32}},
                        {"stream": f"Successfully tagged {query.get('t')}\n"},
                    ]
                )
            elif url.path.endswith("/push"):
                record.pushes.append({"path": url.path, "query": query})
                self._stream([{"status": "Pushed", "id": "layer"}, {"status": "done"}])
            else:
                self._answer(404, b'{"message": "not here"}', "application/json")

    return Handler


class _EngineServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # The CLI hangs up once it has read a failed build's error; the
        # report socketserver prints on sys.stderr would land in the stderr
        # the in-process CLI call captures.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def engine() -> Iterator[tuple[str, EngineRecord]]:
    record = EngineRecord()
    server = _EngineServer(("127.0.0.1", 0), _engine_handler(record))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}", record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _tar_members(body: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def test_build_sends_the_context_and_tags_to_the_engine(
    engine: tuple[str, EngineRecord],
) -> None:
    address, record = engine
    result = run_servekit(
        "deploy",
        "build",
        "gateway",
        "modelserver-tf",
        "--tag",
        "t1",
        "--json",
        env={"DOCKER_HOST": address},
        installed=True,
    )
    assert result.returncode == 0, result.stderr
    assert [build["query"]["t"] for build in record.builds] == [
        "servekit/gateway:t1",
        "servekit/modelserver-tf:t1",
    ]
    gateway, modelserver = record.builds
    assert gateway["query"]["dockerfile"] == "deploy/docker/gateway.Dockerfile"
    assert "buildargs" not in gateway["query"]
    assert json.loads(modelserver["query"]["buildargs"]) == {"MODELSERVER_EXTRAS": "tf"}
    assert json.loads(gateway["query"]["labels"])["org.opencontainers.image.source"]
    # The engine received exactly the context servekit computes, gzipped.
    assert gateway["body"][:2] == b"\x1f\x8b"
    context = images.build_context(REPO_ROOT, "deploy/docker/gateway.Dockerfile")
    assert _tar_members(gateway["body"]) == images.context_members(context)
    context.close()
    built = json.loads(result.stdout)
    assert [item["image"] for item in built] == [
        "servekit/gateway:t1",
        "servekit/modelserver-tf:t1",
    ]
    assert built[0]["id"] == "sha256:" + "ab" * 32


def test_default_tag_is_the_git_revision(engine: tuple[str, EngineRecord]) -> None:
    address, record = engine
    result = run_servekit("deploy", "build", "trainer", env={"DOCKER_HOST": address})
    assert result.returncode == 0, result.stderr
    expected = git_revision(REPO_ROOT)
    assert record.builds[0]["query"]["t"] == f"servekit/trainer:{expected}"
    labels = json.loads(record.builds[0]["query"]["labels"])
    assert labels["org.opencontainers.image.revision"] == expected
    assert f"tag: {expected}" in result.stdout


def test_push_sends_each_image_to_its_repository(
    engine: tuple[str, EngineRecord],
) -> None:
    address, record = engine
    result = run_servekit(
        "deploy",
        "build",
        "gateway",
        "--tag",
        "t2",
        "--repository",
        "registry.example.com/acme",
        "--push",
        env={"DOCKER_HOST": address},
    )
    assert result.returncode == 0, result.stderr
    assert len(record.pushes) == 1
    assert record.pushes[0]["path"].endswith(
        "/images/registry.example.com/acme/gateway/push"
    )
    assert record.pushes[0]["query"]["tag"] == "t2"


def test_a_failed_build_is_one_line_and_a_non_zero_exit(
    engine: tuple[str, EngineRecord],
) -> None:
    address, record = engine
    record.fail_builds_with = "failed to solve: uv sync\nexit code 2"
    result = run_servekit(
        "deploy", "build", "gateway", "--tag", "t3", env={"DOCKER_HOST": address}
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    expected = (
        "servekit: error: servekit/gateway:t3: failed to solve: uv sync exit code 2"
    )
    assert lines[-1] == expected, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "docker_host",
    ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"],
    ids=["socket", "tcp"],
)
def test_no_engine_is_a_clean_one_line_error(docker_host: str) -> None:
    result = run_servekit(
        "deploy", "build", env={"DOCKER_HOST": docker_host}, installed=True
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("servekit: error: no Docker engine is reachable")


def test_connect_raises_engine_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    with pytest.raises(EngineUnavailable):
        images.connect()


def test_dry_run_needs_no_engine() -> None:
    result = run_servekit(
        "deploy",
        "build",
        "--dry-run",
        "--json",
        "--tag",
        "t4",
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["image"] for row in rows] == [
        f"servekit/{name}:t4" for name in images.DEFAULT_IMAGES
    ]
    assert all(row["context_files"] > 50 for row in rows)
