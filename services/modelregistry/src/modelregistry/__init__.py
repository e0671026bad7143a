"""The servekit model registry: TF Serving's folder layout, manifests, atomic publishing,
labels and the serving config files generated from them."""

from modelregistry.errors import (
    IntegrityError,
    InvalidName,
    LabelInUse,
    ManifestError,
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
from modelregistry.manifest import (
    MANIFEST_FILE,
    DataFingerprint,
    Feature,
    FileDigest,
    Manifest,
    Signature,
    TensorSpec,
    read_manifest,
    sha256_file,
)
from modelregistry.pickles import load_pickle
from modelregistry.registry import CANARY, STABLE, Draft, Registry, library_versions
from modelregistry.servingconfig import ModelEntry, config_text

__all__ = [
    "CANARY",
    "MANIFEST_FILE",
    "MODEL_STATE_FILE",
    "SERVEKIT_CONFIG_FILE",
    "SKLEARN_CONFIG_FILE",
    "STABLE",
    "TF_CONFIG_FILE",
    "DataFingerprint",
    "Draft",
    "Feature",
    "FileDigest",
    "IntegrityError",
    "InvalidName",
    "LabelInUse",
    "Manifest",
    "ManifestError",
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
    "library_versions",
    "load_pickle",
    "parse_version",
    "read_manifest",
    "sha256_file",
]
