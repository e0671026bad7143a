"""The `servekit.json` manifest: what a version is, how to call it, and its files' digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from modelregistry.errors import ManifestError

MANIFEST_FILE = "servekit.json"
SCHEMA_VERSION = 1

DType = Literal[
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "string",
]
DTYPES: tuple[str, ...] = get_args(DType)
"""Every dtype a manifest may name (numpy spellings, plus ``"string"``)."""
Framework = Literal["sklearn", "tensorflow"]
Method = Literal["predict", "classify", "regress"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One named input or output of a signature."""

    dtype: DType
    """Element type; `string` holds text or raw bytes."""
    shape: list[int]
    """Dimensions with -1 for unknown; the first is the batch dimension."""


class Signature(_Strict):
    """A callable entry point of the model, as TF Serving names them."""

    method: Method = "predict"
    """Which TF Serving API the signature is meant for."""
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


class Feature(_Strict):
    """One column of a tabular model's input frame, in column order."""

    name: str
    dtype: DType
    nullable: bool | None = None
    """The model takes a missing value here (JSON null, NaN): its pipeline
    imputes the column. Typed endpoints accept null only for such columns.
    None (the key absent) is a manifest written before servekit recorded this:
    typed endpoints then keep what they did for it, taking null in any float
    column. Publishing always writes true or false (`record_nullability`)."""

    @model_serializer(mode="wrap")
    def _omit_unrecorded(
        self, serialize: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        # A manifest rewritten later (amend_version) stays as it was written:
        # without the key, not with a null that no publisher ever wrote.
        data: dict[str, Any] = serialize(self)
        if self.nullable is None:
            data.pop("nullable", None)
        return data


class FileDigest(_Strict):
    """The sha256 and size of one file of the version folder."""

    sha256: str
    size: int


class DataFingerprint(_Strict):
    """What the model was trained on, so two versions can be told apart by data."""

    sha256: str
    rows: int
    columns: list[str] = Field(default_factory=list)


class CompiledVerdict(_Strict):
    """The parity gate's verdict on a version's compiled model (``compiled/``)."""

    status: Literal["passed", "refused"]
    """`passed`: the compiled model serves; `refused`: the pickle serves."""
    mode: Literal["exact", "approximate"]
    """`exact`: float64 throughout; `approximate`: float32 trees, opt-in."""
    runtime: str
    """The runtime and version the compiled model ran on in the gate."""
    tolerance: float
    """The bound the max error was held to."""
    max_error: float | None = None
    """Max relative difference (regressors) or probability difference
    (classifiers) from the pickle over the gate's rows; None when not measured."""
    rows: dict[str, int] = Field(default_factory=dict)
    """Rows compared, by origin: `heldout`, `examples`, `thresholds`."""
    failed_step: str | None = None
    """The pipeline step, or converter, that failed (refused versions)."""
    reason: str | None = None
    """Why the gate refused."""
    python_steps: list[str] = Field(default_factory=list)
    """A hybrid plan's steps that no converter takes and that run in Python
    (from the pickle); the gate compared the whole."""
    plan: str | None = None
    """The plan file (relative), when passed."""
    model: str | None = None
    """The ONNX model file (relative), when passed."""


class Manifest(_Strict):
    """The manifest of one published version (`servekit.json`, written last)."""

    schema_version: int = SCHEMA_VERSION
    name: str
    framework: Framework
    created: str
    """UTC time of publication, ISO 8601."""
    artifact: str
    """The main file, relative to the version folder (`model.joblib`, `saved_model.pb`)."""
    code_dir: str | None = None
    """Folder (relative) of the model's own modules, imported from their checked bytes."""
    main_names: dict[str, str] = Field(default_factory=dict)
    """Names a pickle refers to as `__main__.<name>` (helpers defined in a notebook or
    script) -> the module of `code_dir` that defines them."""
    trusted_types: list[str] | None = None
    """For a `.skops` artifact: the types beyond skops' own defaults that the publisher
    trusted; loading refuses a file that needs any other."""
    task: Literal["regression", "classification"] | None = None
    classes: list[str] | None = None
    features: list[Feature] = Field(default_factory=list)
    signatures: dict[str, Signature] = Field(default_factory=dict)
    examples: list[dict[str, Any]] = Field(default_factory=list)
    """A few valid input rows: warm-up, documentation and load-test payloads."""
    metrics: dict[str, float] = Field(default_factory=dict)
    data_fingerprint: DataFingerprint | None = None
    libraries: dict[str, str | None] = Field(default_factory=dict)
    compiled: CompiledVerdict | None = None
    """The compiled model's gate verdict; None when the version was not compiled."""
    files: dict[str, FileDigest] = Field(default_factory=dict)


def record_nullability(manifest: Manifest) -> Manifest:
    """The manifest with every feature's `nullable` written out: a feature whose
    publisher did not say is not nullable (a typed endpoint refuses null there)."""
    if all(feature.nullable is not None for feature in manifest.features):
        return manifest
    features = [
        feature.model_copy(update={"nullable": bool(feature.nullable)})
        for feature in manifest.features
    ]
    return manifest.model_copy(update={"features": features})


def nullability_unrecorded(manifest: Manifest) -> list[str]:
    """The features whose manifest predates `Feature.nullable` (empty when every
    feature records it)."""
    return [feature.name for feature in manifest.features if feature.nullable is None]


def read_manifest(version_dir: Path) -> Manifest:
    """Read and validate the manifest of a version folder.

    Raises:
        ManifestError: the file is missing, is not JSON, or does not fit the schema.
    """
    path = version_dir / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror}") from exc
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ManifestError(
            f"{path}: invalid manifest at {where}: {first['msg']}"
        ) from exc


def sha256_file(path: Path) -> str:
    """Digest a file in chunks so large variables files do not fill memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def digest_files(version_dir: Path) -> dict[str, FileDigest]:
    """Digest every file below a version folder except the manifest itself."""
    digests: dict[str, FileDigest] = {}
    for dirpath, dirnames, filenames in os.walk(version_dir):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            relative = path.relative_to(version_dir).as_posix()
            if relative == MANIFEST_FILE:
                continue
            digests[relative] = FileDigest(
                sha256=sha256_file(path), size=path.stat().st_size
            )
    return digests


def verify_files(version_dir: Path, manifest: Manifest) -> list[str]:
    """List every way the folder's files differ from the manifest (empty when sound)."""
    problems: list[str] = []
    actual = digest_files(version_dir)
    for relative, expected in sorted(manifest.files.items()):
        found = actual.get(relative)
        if found is None:
            problems.append(f"{relative}: missing")
        elif found.sha256 != expected.sha256:
            problems.append(f"{relative}: sha256 mismatch")
    for relative in sorted(set(actual) - set(manifest.files)):
        problems.append(f"{relative}: not in the manifest")
    if manifest.artifact not in manifest.files:
        problems.append(f"{manifest.artifact}: artifact not listed in the manifest")
    return problems
