"""Run the Open Inference Protocol clients (tritonclient, kserve) from their own venv.

They need protobuf < 7, so `make test` installs them into .venv-clients/ (the
Makefile's `clients` target) and tests run scripts from tests/clients/ with that
interpreter. A test run by hand without that venv is skipped, saying how to make it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO_ROOT

CLIENTS_PYTHON = REPO_ROOT / ".venv-clients" / "bin" / "python"
SCRIPTS = REPO_ROOT / "tests" / "clients"


def clients_python() -> Path:
    """The clients' interpreter, or a skip when `make clients` has not run."""
    if not CLIENTS_PYTHON.exists():
        pytest.skip(
            f"{CLIENTS_PYTHON} is missing: run `make clients` (make test does) to "
            f"install tritonclient and kserve"
        )
    return CLIENTS_PYTHON


def run_client_script(script: str, query: Any, timeout: float = 120.0) -> Any:
    """Run tests/clients/<script> with the clients' interpreter: JSON in, JSON out.

    A failing script fails the test with its stderr.
    """
    completed = subprocess.run(
        [str(clients_python()), str(SCRIPTS / script)],
        input=json.dumps(query).encode(),
        capture_output=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"{script} exited {completed.returncode}:\n"
            f"{completed.stderr.decode(errors='replace')[-4000:]}"
        )
    return json.loads(completed.stdout)
