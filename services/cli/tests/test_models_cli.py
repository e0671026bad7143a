"""`servekit models ...` over a real registry, through the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import pandas as pd
import pytest
from modelregistry import Registry
from sklearn.linear_model import LogisticRegression

SERVEKIT = Path(sys.executable).with_name("servekit")


def run(
    *args: str, registry: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SERVEKIT), *args, "--registry", str(registry)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def pickled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("external")
    frame = pd.DataFrame({"height": [1.0, 2.0, 3.0, 4.0], "width": [4, 3, 2, 1]})
    model = LogisticRegression().fit(frame, ["small", "small", "big", "big"])
    joblib.dump(model, folder / "model.pkl")
    frame.to_csv(folder / "rows.csv", index=False)
    return folder / "model.pkl", folder / "rows.csv"


def test_publish_list_show_verify_and_rollouts(
    tmp_path: Path, pickled: tuple[Path, Path]
) -> None:
    registry = tmp_path / "models"
    model, rows = pickled
    assert (
        "version 1"
        in run(
            "models",
            "publish",
            "shapes",
            str(model),
            "--example",
            str(rows),
            registry=registry,
        ).stdout
    )
    run("models", "publish", "shapes", str(model), registry=registry)

    listed = json.loads(run("models", "list", "--json", registry=registry).stdout)
    assert [(r["name"], r["version"], r["framework"]) for r in listed] == [
        ("shapes", 1, "sklearn"),
        ("shapes", 2, "sklearn"),
    ]
    shown = json.loads(
        run("models", "show", "shapes", "1", "--json", registry=registry).stdout
    )
    assert [f["name"] for f in shown["features"]] == ["height", "width"]
    assert [f["dtype"] for f in shown["features"]] == ["float64", "int64"]
    assert shown["classes"] == ["big", "small"]
    assert set(shown["signatures"]) == {"serving_default", "classify", "predict_proba"}
    assert len(shown["examples"]) == 4
    assert "ok" in run("models", "verify", registry=registry).stdout

    run("models", "label", "shapes", "stable", "1", registry=registry)
    run("models", "label", "shapes", "canary", "2", registry=registry)
    refused = run("models", "delete", "shapes", "2", registry=registry, check=False)
    assert refused.returncode != 0
    assert "labelled canary" in refused.stderr
    assert "stable -> 2" in run("models", "promote", "shapes", registry=registry).stdout
    assert (
        "stable -> 1" in run("models", "rollback", "shapes", registry=registry).stdout
    )
    config = run("models", "config", "--all", registry=registry).stdout
    assert 'name: "shapes"' in config
    assert 'key: "stable"' in config

    (Registry(registry).version_dir("shapes", 2) / "model.joblib").write_bytes(
        b"tampered"
    )
    failed = run("models", "verify", "shapes", registry=registry, check=False)
    assert failed.returncode != 0
    assert "shapes/2" in failed.stderr


def publish_in_process(registry: Registry, model: Path) -> None:
    """Publish without a subprocess: these tests are about the command that follows."""
    from servekit.publishing import PublishRequest, publish_external

    publish_external(registry, PublishRequest("shapes", model))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("models", "show", "ghost"), "model 'ghost' not found"),
        (("models", "show", "shapes", "x"), "invalid version"),
        (("models", "delete", "shapes", "9"), "has no version 9"),
        (("models", "rollback", "shapes"), "no earlier stable version"),
        (("models", "publish", "shapes", "/nonexistent/model.pkl"), "not found"),
        (("models", "label", "shapes", "BAD", "1"), "invalid label"),
    ],
)
def test_bad_input_gets_one_line_and_nonzero_exit(
    tmp_path: Path, pickled: tuple[Path, Path], args: tuple[str, ...], message: str
) -> None:
    registry = tmp_path / "models"
    publish_in_process(Registry(registry), pickled[0])
    before = sorted(
        p.relative_to(registry).as_posix()
        for p in registry.rglob("*")
        if ".lock" not in p.name
    )
    result = run(*args, registry=registry, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "usage:" in result.stderr
    after = sorted(
        p.relative_to(registry).as_posix()
        for p in registry.rglob("*")
        if ".lock" not in p.name
    )
    assert before == after


def test_unwritable_registry_is_a_clear_error(
    tmp_path: Path, pickled: tuple[Path, Path]
) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/servekit-registry")  # root may write anywhere but /proc
    else:
        target = tmp_path / "readonly"
        target.mkdir()
        target.chmod(0o500)
    result = run(
        "models", "publish", "shapes", str(pickled[0]), registry=target, check=False
    )
    assert result.returncode != 0
    assert "not writable" in result.stderr
