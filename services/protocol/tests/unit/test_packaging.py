"""The committed generated modules and the import footprint."""

import subprocess
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def test_generated_modules_match_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(PACKAGE_ROOT / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_importing_the_protocol_never_imports_tensorflow() -> None:
    code = (
        "import sys\n"
        "from servekit_protocol import examples, json_codec, messages, metadata\n"
        "from servekit_protocol import services, tensors\n"
        "tensors.to_ndarray(tensors.from_ndarray([1.0]))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "               {'tensorflow', 'tensorflow_serving', 'keras'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == ""
