"""The servekit model registry: TF Serving's folder layout, manifests, atomic publishing,
labels and the serving config files generated from them."""

from modelregistry.codemodules import CodeModule, modules_from_files
from modelregistry.errors import (
    IntegrityError,
    InvalidName,
    LabelInUse,
    ManifestError,
    MissingCode,
    ModelNotFound,
    RegistryError,
    RegistryNotWritable,
    VersionExists,
    VersionNotFound,
)
from modelregistry.layout import (
    MODEL_STATE_FILE,
    SERVEKIT_CONFIG_FILE,
    SKLEARN_CONFIG_FILE,
    TF_CONFIG_FILE,
    check_label,
    check_model_name,
    parse_version,
)
from modelregistry.loading import (
    is_skops,
    is_trustable,
    load_model,
    unpickle,
    untrusted_types,
)
from modelregistry.manifest import (
    DTYPES,
    MANIFEST_FILE,
    CompiledVerdict,
    DataFingerprint,
    Feature,
    FileDigest,
    Manifest,
    Signature,
    TensorSpec,
    nullability_unrecorded,
    read_manifest,
    sha256_file,
)
from modelregistry.registry import CANARY, STABLE, Draft, Registry, library_versions
from modelregistry.servingconfig import ModelEntry, config_text
from modelregistry.verification import version_problems

load_pickle = load_model
"""The former name of :func:`load_model`, kept for callers that only load pickles."""

__all__ = [
    "CANARY",
    "DTYPES",
    "MANIFEST_FILE",
    "MODEL_STATE_FILE",
    "SERVEKIT_CONFIG_FILE",
    "SKLEARN_CONFIG_FILE",
    "STABLE",
    "TF_CONFIG_FILE",
    "CodeModule",
    "CompiledVerdict",
    "DataFingerprint",
    "Draft",
    "Feature",
    "FileDigest",
    "IntegrityError",
    "InvalidName",
    "LabelInUse",
    "Manifest",
    "ManifestError",
    "MissingCode",
    "ModelEntry",
    "ModelNotFound",
    "Registry",
    "RegistryError",
    "RegistryNotWritable",
    "Signature",
    "TensorSpec",
    "VersionExists",
    "VersionNotFound",
    "check_label",
    "check_model_name",
    "config_text",
    "is_skops",
    "is_trustable",
    "library_versions",
    "load_model",
    "load_pickle",
    "nullability_unrecorded",
    "modules_from_files",
    "parse_version",
    "read_manifest",
    "sha256_file",
    "unpickle",
    "untrusted_types",
    "version_problems",
]
