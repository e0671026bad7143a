"""`servekit batch predict` in process on a model with a text input, against the server.

In process, a table's text column reaches scikit-learn's runtime as the ``str``
objects read from the file, not as the UTF-8 bytes the REST codec would give
it (which the runtime decodes first). The predictions must still be the online
endpoint's, byte for byte, for the compiled model and for the pickle, with
non-ASCII text, quotes, commas and empty text among the values.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.support.compiledmodels import build_models, models_config, publish
from tests.support.modelserver import ModelServer, model_server
from tests.support.processes import VENV_BIN

pytestmark = pytest.mark.integration

MODELS = ("sizes", "plain")
"""The same classifier, compiled (``sizes``) and served from its pickle (``plain``)."""
ODD_REGIONS = ["nörth", "東京", "", "north,east", 'so"uth', "north"]


@dataclass
class Served:
    server: ModelServer
    registry: Path
    rows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("batch-text")
    registry = folder / "models"
    build_models(folder)
    shutil.copy(folder / "sizes.pkl", folder / "plain.pkl")
    publish(folder, registry, "sizes")
    publish(folder, registry, "plain", "--compile", "none")
    rows: list[dict[str, Any]] = json.loads((folder / "rows.json").read_text())
    rows += [
        {**rows[index], "region": region} for index, region in enumerate(ODD_REGIONS)
    ]
    with model_server(
        [f"--model_config_file={models_config(folder, registry, MODELS)}"],
        log_path=folder / "server.log",
    ) as server:
        yield Served(server, registry, rows)


def write_input(fmt: str, path: Path, rows: list[dict[str, Any]]) -> None:
    names = list(rows[0])
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "csv":
        pacsv.write_csv(pa.Table.from_pylist(rows), path)
    else:
        path.write_text(
            "".join(
                json.dumps({name: row[name] for name in names}, ensure_ascii=False)
                + "\n"
                for row in rows
            ),
            encoding="utf-8",
        )


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("name", MODELS)
def test_text_input_predictions_equal_the_online_answers(
    served: Served, tmp_path: Path, fmt: str, name: str
) -> None:
    source = tmp_path / f"rows.{fmt}"
    write_input(fmt, source, served.rows)
    output = tmp_path / "out"
    result = subprocess.run(
        [
            str(VENV_BIN / "servekit"),
            "batch",
            "predict",
            "--no-progress",
            "--model",
            f"{name}:1",
            "--input",
            str(source),
            "--output",
            str(output),
            "--registry",
            str(served.registry),
            "--batch-size",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [
        json.loads(line)
        for path in sorted(output.glob("prediction.results-*"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert [line["instance"]["region"] for line in lines] == [
        row["region"] for row in served.rows
    ]
    response = httpx.post(
        f"{served.server.rest_url}/v1/models/{name}/versions/1:predict",
        json={"instances": served.rows},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert [line["prediction"] for line in lines] == response.json()["predictions"]
    assert not (output / "prediction.errors-00000-of-00001").read_text()
