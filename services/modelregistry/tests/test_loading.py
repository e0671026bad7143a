"""Loading versions: `__main__` names from code modules, strict code folders, skops."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from modelregistry import (
    IntegrityError,
    ManifestError,
    MissingCode,
    Registry,
    load_model,
    modules_from_files,
    unpickle,
)

HELPERS = """\
def offset(value):
    return value + 1.0


class Scale:
    def __init__(self, factor):
        self.factor = factor
        self.shift = offset

    def predict(self, rows):
        return [self.factor * self.shift(sum(row)) for row in rows]
"""
NOTEBOOK = (
    HELPERS
    + """
import sys
import joblib

joblib.dump(Scale(2.0), sys.argv[1])
"""
)
MARKER_CODE = """\
import pathlib
pathlib.Path({marker!r}).write_text("ran")
"""


@pytest.fixture
def notebook_pickle(tmp_path: Path) -> Path:
    """A pickle dumped by a script run as `__main__`, as a notebook would."""
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    path = tmp_path / "model.pkl"
    subprocess.run([sys.executable, str(script), str(path)], check=True)
    return path


def publish_notebook_model(registry: Registry, pickle_path: Path, helpers: Path) -> int:
    with pickle_path.open("rb") as handle:
        _, mapping = unpickle(
            handle, str(pickle_path), modules_from_files([helpers]), None
        )
    with registry.publish("scale", framework="sklearn") as draft:
        (draft.path / "model.joblib").write_bytes(pickle_path.read_bytes())
        (draft.path / "code").mkdir()
        (draft.path / "code" / helpers.name).write_bytes(helpers.read_bytes())
        draft.manifest.update(
            artifact="model.joblib", code_dir="code", main_names=mapping
        )
    assert draft.version is not None
    return draft.version


def test_main_names_resolve_to_the_code_module(
    registry: Registry, notebook_pickle: Path, tmp_path: Path
) -> None:
    helpers = tmp_path / "scale_helpers.py"
    helpers.write_text(HELPERS)
    version = publish_notebook_model(registry, notebook_pickle, helpers)
    manifest = registry.manifest("scale", version)
    assert manifest.main_names == {"Scale": "scale_helpers", "offset": "scale_helpers"}
    model = load_model(registry.version_dir("scale", version), manifest)
    assert model.predict([[1.0, 2.0]]) == [8.0]
    assert type(model).__module__ == "scale_helpers"
    # Nothing wrote bytecode next to the verified module.
    assert registry.verify("scale", version) == []


def test_missing_main_names_are_all_listed(
    notebook_pickle: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial.py"
    partial.write_text("def unrelated():\n    pass\n")
    with (
        notebook_pickle.open("rb") as handle,
        pytest.raises(MissingCode) as caught,
    ):
        unpickle(handle, str(notebook_pickle), modules_from_files([partial]), None)
    assert caught.value.names == ["Scale", "offset"]
    assert "Scale, offset" in str(caught.value)


def test_a_mapping_without_the_name_is_refused(
    registry: Registry, notebook_pickle: Path, tmp_path: Path
) -> None:
    helpers = tmp_path / "scale_helpers.py"
    helpers.write_text(HELPERS)
    with notebook_pickle.open("rb") as handle, pytest.raises(MissingCode) as caught:
        unpickle(
            handle,
            str(notebook_pickle),
            modules_from_files([helpers]),
            {"Scale": "scale_helpers"},
        )
    assert caught.value.names == ["offset"]
    assert "does not map" in str(caught.value)


def test_unlisted_code_file_is_refused_and_never_runs(
    registry: Registry, notebook_pickle: Path, tmp_path: Path
) -> None:
    helpers = tmp_path / "scale_helpers.py"
    helpers.write_text(HELPERS)
    version = publish_notebook_model(registry, notebook_pickle, helpers)
    version_dir = registry.version_dir("scale", version)
    marker = tmp_path / "ran.txt"
    for planted in ("__init__.py", "sitecustomize.py"):
        (version_dir / "code" / planted).write_text(
            MARKER_CODE.format(marker=str(marker))
        )
    manifest = registry.manifest("scale", version)
    with pytest.raises(IntegrityError) as caught:
        load_model(version_dir, manifest)
    assert "code/__init__.py: not in the manifest" in str(caught.value)
    assert not marker.exists()
    assert "code/__init__.py: not in the manifest" in registry.verify("scale", version)


def test_mapping_to_a_module_not_shipped_is_refused(
    registry: Registry, notebook_pickle: Path, tmp_path: Path
) -> None:
    with registry.publish("scale", framework="sklearn") as draft:
        (draft.path / "model.joblib").write_bytes(notebook_pickle.read_bytes())
        draft.manifest.update(artifact="model.joblib", main_names={"Scale": "gone"})
    problems = registry.verify("scale", 1)
    assert problems == [
        "main_names: __main__.Scale maps to gone, which is not a module of the "
        "version's code folder"
    ]
    with pytest.raises(IntegrityError, match="maps to gone"):
        load_model(registry.version_dir("scale", 1), registry.manifest("scale", 1))


def test_skops_loads_only_trusted_types(registry: Registry) -> None:
    import numpy as np
    import skops.io as sio
    from sklearn.tree import DecisionTreeRegressor

    model = DecisionTreeRegressor(random_state=0).fit([[0.0], [1.0], [2.0]], [0, 1, 4])
    needed = sorted(sio.get_untrusted_types(data=sio.dumps(model)))
    for trusted in (needed, []):
        with registry.publish("tree", framework="sklearn") as draft:
            sio.dump(model, draft.path / "model.skops")
            draft.manifest.update(artifact="model.skops", trusted_types=trusted)
    good = load_model(registry.version_dir("tree", 1), registry.manifest("tree", 1))
    assert np.array_equal(good.predict([[2.0]]), model.predict([[2.0]]))
    with pytest.raises(ManifestError, match="untrusted types"):
        load_model(registry.version_dir("tree", 2), registry.manifest("tree", 2))
