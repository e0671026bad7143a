"""What one `servekit loadtest` run does: target, model, load, gates and output folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import servekit

PROTOCOLS = ("rest", "v2", "typed", "grpc")
SHAPES = ("constant", "step", "spike")
LOCUSTFILE_IN_REPO = Path("tests") / "load" / "locustfile.py"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


class PlanError(ValueError):
    """An option value that cannot describe a run."""


@dataclass(frozen=True)
class RunPlan:
    """Everything the runner and the report need to know about a run."""

    target: str
    """The server as given: `http://host:port`, `host:port` (gRPC) and so on."""
    host: str
    """The target as Locust's `--host` takes it for this protocol."""
    model: str
    protocol: str
    users: int
    spawn_rate: float
    duration_seconds: int
    shape: str
    out_dir: Path
    locustfile: Path
    version: int | None = None
    label: str | None = None
    batch_size: int = 1
    slo: str | None = None
    manifest: Path | None = None
    """The manifest the payloads are generated from; None: the server's metadata."""

    @property
    def locust_conf(self) -> Path:
        return self.locustfile.with_name("locust.conf")

    @property
    def csv_prefix(self) -> Path:
        return self.out_dir / "locust"

    @property
    def stats_csv(self) -> Path:
        return self.out_dir / "locust_stats.csv"

    @property
    def history_csv(self) -> Path:
        return self.out_dir / "locust_stats_history.csv"

    @property
    def request_log(self) -> Path:
        return self.out_dir / "requests.csv"

    @property
    def locust_html(self) -> Path:
        return self.out_dir / "locust.html"

    @property
    def locust_log(self) -> Path:
        return self.out_dir / "locust.log"


def parse_duration(text: str) -> int:
    """Seconds from `90`, `60s`, `2m`, `1h30m` (as Locust's `--run-time`).

    Raises:
        PlanError: not a positive duration.
    """
    compact = text.strip().lower()
    if compact.isdigit():
        seconds = float(compact)
    else:
        parts = _DURATION_PART.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise PlanError(f"invalid duration {text!r}: use e.g. 30s, 2m or 1h30m")
        scale = {"h": 3600, "m": 60, "s": 1}
        seconds = sum(float(number) * scale[unit] for number, unit in parts)
    if seconds < 1:
        raise PlanError(f"invalid duration {text!r}: at least 1s")
    return round(seconds)


def locust_host(target: str, protocol: str) -> str:
    """The target in the form the protocol's users expect.

    HTTP users need a URL (`http://` is added to a bare `host:port`); the gRPC user
    needs `host:port` (a URL's scheme and path are dropped).

    Raises:
        PlanError: the target has no host.
    """
    text = target.strip().rstrip("/")
    match = re.fullmatch(
        r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<rest>[^/]+)(?P<path>/.*)?", text
    )
    if match is None or not match.group("rest"):
        raise PlanError(f"invalid target {target!r}: expected URL or host:port")
    if protocol == "grpc":
        host_port = match.group("rest")
        if ":" not in host_port:
            raise PlanError(f"invalid gRPC target {target!r}: expected host:port")
        return host_port
    if match.group("scheme") is None:
        return f"http://{text}"
    if match.group("scheme") not in ("http", "https"):
        raise PlanError(f"invalid target {target!r}: {protocol} needs http(s)://")
    return text


def find_locustfile(start: Path) -> Path | None:
    """`tests/load/locustfile.py` of the servekit checkout holding `start` or this CLI."""
    candidates = [start.resolve(), Path(servekit.__file__).resolve().parent]
    for origin in candidates:
        for folder in (origin, *origin.parents):
            found = folder / LOCUSTFILE_IN_REPO
            if found.is_file():
                return found
    return None
