"""The book's chapter 2, end to end: a notebook's pickle published and served.

A script run as ``__main__`` (as a notebook runs) defines ``column_ratio``,
``ratio_name`` and ``ClusterSimilarity``, fits the chapter's pipeline (ratio
pipelines, a log pipeline, cluster similarity, one-hot through a column selector, a
random forest) on data made here, and ``joblib.dump``s it. ``servekit models
publish --code`` maps its ``__main__`` names to the helpers module; ``servekit
serve`` then answers v1, v2 and the typed endpoint exactly as the notebook's own
``predict``. A pipeline with a text column published without ``--example``, and
its ``.skops`` form, are served the same way; a version with a file its manifest
does not list is refused while the previous one keeps serving.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from modelregistry import Registry

from tests.support.processes import (
    VENV_BIN,
    ServerProcess,
    free_port,
    running_process,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELPERS = '''\
"""The helpers the chapter defines in its notebook, as the production module."""

from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.metrics.pairwise import rbf_kernel


def column_ratio(X):
    return X[:, [0]] / X[:, [1]]


def ratio_name(function_transformer, feature_names_in):
    return ["ratio"]


class ClusterSimilarity(BaseEstimator, TransformerMixin):
    def __init__(self, n_clusters=10, gamma=1.0, random_state=None):
        self.n_clusters = n_clusters
        self.gamma = gamma
        self.random_state = random_state

    def fit(self, X, y=None, sample_weight=None):
        self.kmeans_ = KMeans(
            self.n_clusters, n_init=10, random_state=self.random_state
        )
        self.kmeans_.fit(X, sample_weight=sample_weight)
        return self

    def transform(self, X):
        return rbf_kernel(X, self.kmeans_.cluster_centers_, gamma=self.gamma)

    def get_feature_names_out(self, names=None):
        return [f"Cluster {i} similarity" for i in range(self.n_clusters)]
'''

NOTEBOOK = (
    HELPERS
    + """
import json
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.ensemble import RandomForestRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

out = Path(sys.argv[1])
rng = np.random.default_rng(42)
n = 400
households = rng.integers(50, 800, n).astype(float)
total_rooms = households * rng.uniform(3.0, 7.0, n)
housing = pd.DataFrame({
    "longitude": rng.uniform(-124.3, -114.3, n),
    "latitude": rng.uniform(32.5, 42.0, n),
    "housing_median_age": rng.integers(1, 52, n).astype(float),
    "total_rooms": total_rooms,
    "total_bedrooms": total_rooms * rng.uniform(0.15, 0.3, n),
    "population": households * rng.uniform(2.0, 4.0, n),
    "households": households,
    "median_income": rng.uniform(0.5, 15.0, n),
    "ocean_proximity": rng.choice(
        ["<1H OCEAN", "INLAND", "NEAR OCEAN", "NEAR BAY", "ISLAND"], n
    ),
})
housing.loc[::37, "total_bedrooms"] = np.nan  # as in the census data
labels = (
    40_000 * housing["median_income"]
    + 20_000 * (housing["ocean_proximity"] != "INLAND")
    + rng.normal(0, 10_000, n)
)


def ratio_pipeline():
    return make_pipeline(
        SimpleImputer(strategy="median"),
        FunctionTransformer(column_ratio, feature_names_out=ratio_name),
        StandardScaler(),
    )


log_pipeline = make_pipeline(
    SimpleImputer(strategy="median"),
    FunctionTransformer(np.log, feature_names_out="one-to-one"),
    StandardScaler(),
)
cluster_simil = ClusterSimilarity(n_clusters=10, gamma=1.0, random_state=42)
default_num_pipeline = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
cat_pipeline = make_pipeline(
    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
)
preprocessing = ColumnTransformer(
    [
        ("bedrooms", ratio_pipeline(), ["total_bedrooms", "total_rooms"]),
        ("rooms_per_house", ratio_pipeline(), ["total_rooms", "households"]),
        ("people_per_house", ratio_pipeline(), ["population", "households"]),
        ("log", log_pipeline, ["total_bedrooms", "total_rooms", "population",
                               "households", "median_income"]),
        ("geo", cluster_simil, ["latitude", "longitude"]),
        ("cat", cat_pipeline, make_column_selector(dtype_include=object)),
    ],
    remainder=default_num_pipeline,
)
final_model = make_pipeline(
    preprocessing, RandomForestRegressor(n_estimators=20, random_state=42)
)
final_model.fit(housing, labels)
joblib.dump(final_model, out / "my_california_housing_model.pkl")

# Rows a reader would send (no missing values), read back as publish reads them.
housing.iloc[1:6].dropna().to_csv(out / "rows.csv", index=False)
rows = pd.read_csv(out / "rows.csv")
(out / "expected.json").write_text(json.dumps(final_model.predict(rows).tolist()))
"""
)


@dataclass
class Chapter2:
    """The notebook's files and the running `servekit serve`."""

    folder: Path
    registry: Path
    process: ServerProcess
    http_port: int
    rows: list[dict[str, Any]]
    expected: list[float]
    publish_output: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def servekit(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(VENV_BIN / "servekit"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def run_notebook(folder: Path) -> None:
    """Run the chapter's code as `__main__`, as a notebook kernel does."""
    script = folder / "notebook.py"
    script.write_text(NOTEBOOK)
    subprocess.run([sys.executable, str(script), str(folder)], check=True, timeout=300)
    (folder / "housing_helpers.py").write_text(HELPERS)


def regions_pipeline(folder: Path) -> tuple[Any, pd.DataFrame]:
    """A text column one-hot encoded by name, dumped without example rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "size": rng.uniform(20, 200, 80),
            "region": rng.choice(["north", "south", "east"], 80),
        }
    )
    target = 3.0 * frame["size"] + (frame["region"] == "north") * 50.0
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), ["size"]),
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
            ]
        ),
        Ridge(alpha=0.1),
    ).fit(frame, target)
    joblib.dump(model, folder / "regions.pkl")
    return model, frame.head(3)


@pytest.fixture(scope="module")
def chapter2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chapter2]:
    folder = tmp_path_factory.mktemp("chapter2")
    registry = folder / "models"
    run_notebook(folder)
    published = servekit(
        "models",
        "publish",
        "housing",
        folder / "my_california_housing_model.pkl",
        "--example",
        folder / "rows.csv",
        "--code",
        folder / "housing_helpers.py",
        "--registry",
        registry,
    )
    regions_pipeline(folder)
    servekit(
        "models",
        "publish",
        "regions",
        folder / "regions.pkl",
        "--write-skops",
        "--registry",
        registry,
    )
    servekit(
        "models",
        "publish",
        "regions_skops",
        folder / "regions.skops",
        "--registry",
        registry,
    )
    ports = [free_port() for _ in range(4)]
    while len(set(ports)) < 4:
        ports = [free_port() for _ in range(4)]
    output = folder / "serve.log"
    with running_process(
        [
            VENV_BIN / "servekit",
            "serve",
            "--registry",
            registry,
            "--port",
            str(ports[0]),
            "--grpc-port",
            str(ports[1]),
            "--model-server-port",
            str(ports[2]),
            "--model-server-rest-port",
            str(ports[3]),
            "--log-dir",
            folder / "logs",
        ],
        log_path=output,
        ready=lambda: "Ctrl-C stops both processes" in output.read_text(),
        ready_timeout=240,
        stop_timeout=40,
    ) as process:
        yield Chapter2(
            folder=folder,
            registry=registry,
            process=process,
            http_port=ports[0],
            rows=pd.read_csv(folder / "rows.csv").to_dict(orient="records"),
            expected=json.loads((folder / "expected.json").read_text()),
            publish_output=published.stdout,
        )


def test_notebook_names_are_mapped_to_the_helpers_module(chapter2: Chapter2) -> None:
    manifest = Registry(chapter2.registry).manifest("housing", 1)
    assert manifest.main_names == {
        "ClusterSimilarity": "housing_helpers",
        "column_ratio": "housing_helpers",
        "ratio_name": "housing_helpers",
    }
    assert "code/housing_helpers.py" in manifest.files
    # Its own helpers run code on load, so no pickle-free form is offered.
    assert "no .skops form" in chapter2.publish_output
    assert "housing_helpers.ClusterSimilarity" in chapter2.publish_output


def test_v1_through_the_gateway_equals_the_notebook(chapter2: Chapter2) -> None:
    response = httpx.post(
        f"{chapter2.url}/v1/models/housing:predict",
        json={"instances": chapter2.rows},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == chapter2.expected


def test_v2_through_the_gateway_equals_the_notebook(chapter2: Chapter2) -> None:
    manifest = Registry(chapter2.registry).manifest("housing", 1)
    inputs = []
    for feature in manifest.features:
        values = [row[feature.name] for row in chapter2.rows]
        text = feature.dtype == "string"
        inputs.append(
            {
                "name": feature.name,
                "shape": [len(values)],
                "datatype": "BYTES" if text else "FP64",
                "data": values,
            }
        )
    response = httpx.post(
        f"{chapter2.url}/v2/models/housing/infer", json={"inputs": inputs}, timeout=60
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["data"] == chapter2.expected


def test_typed_endpoint_equals_the_notebook(chapter2: Chapter2) -> None:
    response = httpx.post(
        f"{chapter2.url}/models/housing/predict",
        json={"instances": chapter2.rows},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == chapter2.expected


def test_missing_code_lists_every_notebook_name(chapter2: Chapter2) -> None:
    refused = servekit(
        "models",
        "publish",
        "housing",
        chapter2.folder / "my_california_housing_model.pkl",
        "--registry",
        chapter2.folder / "elsewhere",
        check=False,
    )
    assert refused.returncode != 0
    assert "ClusterSimilarity, column_ratio, ratio_name" in refused.stderr
    assert "--code" in refused.stderr


@pytest.mark.parametrize("model", ["regions", "regions_skops"])
def test_text_column_without_example_and_its_skops_form_serve(
    chapter2: Chapter2, model: str
) -> None:
    registry = Registry(chapter2.registry)
    manifest = registry.manifest(model, 1)
    assert {f.name: f.dtype for f in manifest.features} == {
        "size": "float64",
        "region": "string",
    }
    # No --example: the example row comes from what the pipeline was fitted on.
    (example,) = manifest.examples
    assert example["region"] in {"north", "south", "east"}
    if model == "regions_skops":
        assert manifest.artifact == "model.skops"
        assert manifest.trusted_types is not None
    pipeline = joblib.load(chapter2.folder / "regions.pkl")
    rows = [
        {"size": 42.5, "region": "north"},
        {"size": 120.0, "region": "east"},
        {"size": 77.0, "region": "west"},  # unknown: one-hot ignores it
    ]
    expected = pipeline.predict(pd.DataFrame(rows)).tolist()
    for path in (f"/v1/models/{model}:predict", f"/models/{model}/predict"):
        response = httpx.post(
            f"{chapter2.url}{path}", json={"instances": rows}, timeout=60
        )
        assert response.status_code == 200, (path, response.text)
        assert response.json()["predictions"] == expected


def test_unlisted_code_file_fails_the_version_and_never_runs(
    chapter2: Chapter2,
) -> None:
    model_dir = chapter2.registry / "housing"
    marker = chapter2.folder / "planted-code-ran"
    staging = model_dir / ".staging-2"
    shutil.copytree(model_dir / "1", staging)
    (staging / "code" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
    )
    (staging / "code" / "sklearn.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
    )
    os.rename(staging, model_dir / "2")

    def version_2_failed() -> dict[str, Any] | None:
        response = httpx.get(f"{chapter2.url}/v1/models/housing", timeout=30)
        for item in response.json().get("model_version_status", []):
            if item["version"] == "2" and item["status"]["error_code"] != "OK":
                return dict(item)
        return None

    wait_until(
        lambda: version_2_failed() is not None, timeout=90, what="version 2 to fail"
    )
    failed = version_2_failed()
    assert failed is not None
    assert "code/__init__.py: not in the manifest" in failed["status"]["error_message"]
    assert not marker.exists()
    response = httpx.post(
        f"{chapter2.url}/v1/models/housing:predict",
        json={"instances": chapter2.rows},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == chapter2.expected
    verified = servekit(
        "models",
        "verify",
        "housing",
        "2",
        "--registry",
        chapter2.registry,
        check=False,
    )
    assert verified.returncode != 0
    assert "code/__init__.py: not in the manifest" in verified.stdout
