"""Loading a scikit-learn version: verify first, then unpickle or read its `.skops` file.

Every process that loads a version (the model server, batch jobs, the publisher's
own check) goes through :func:`load_model`, so they apply the same rules:

- the version passes :func:`modelregistry.verification.version_problems` (every file
  listed with a matching sha256, nothing unlisted, `main_names` pointing at shipped
  modules), or nothing is opened;
- the artifact is digested through the handle it is then read from;
- the version's modules import only from their checked bytes (`codemodules`);
- a pickle's `__main__.<name>` references (helpers a notebook defined) resolve to the
  modules the manifest's `main_names` records, and to nothing else;
- a `.skops` artifact loads only the types its manifest trusts.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from modelregistry.codemodules import CodeModule, importable, read_code_modules
from modelregistry.errors import IntegrityError, ManifestError, MissingCode
from modelregistry.manifest import Manifest
from modelregistry.verification import SKOPS_SUFFIX, version_problems

MAIN = "__main__"
TRUSTABLE_PACKAGES = ("sklearn", "numpy", "scipy")
"""Packages whose classes `publish` may trust in a `.skops` file on its own."""
TRUSTABLE_BUILTINS = frozenset({"builtins.object", "builtins.slice"})


def is_skops(manifest: Manifest) -> bool:
    """Whether the version's artifact is a `.skops` file (no code runs on load)."""
    return manifest.artifact.endswith(SKOPS_SUFFIX)


def load_model(version_dir: Path, manifest: Manifest) -> Any:
    """Verify a scikit-learn version against its manifest, then load its estimator.

    Raises:
        IntegrityError: the folder breaks a rule of `version_problems` (a file
            missing, changed or unlisted...); nothing was opened or imported.
        ManifestError: the manifest names no scikit-learn artifact.
        MissingCode: the pickle refers to `__main__` names the manifest does not map.
        Exception: whatever the pickle's own code raises while loading.
    """
    if manifest.framework != "sklearn":
        raise ManifestError(
            f"{version_dir}: framework {manifest.framework} is no pickle"
        )
    problems = version_problems(version_dir, manifest)
    if problems:
        raise IntegrityError(f"{version_dir}: refusing to load: {'; '.join(problems)}")
    modules = read_code_modules(version_dir, manifest)
    expected = manifest.files[manifest.artifact].sha256
    with (version_dir / manifest.artifact).open("rb") as handle:
        _check_handle(handle, expected, manifest.artifact)
        if is_skops(manifest):
            return load_skops(handle, manifest.trusted_types or [], modules)
        estimator, _ = unpickle(
            handle,
            str(version_dir / manifest.artifact),
            modules,
            main_names=manifest.main_names,
        )
        return estimator


def _check_handle(handle: IO[bytes], expected: str, relative: str) -> None:
    # Digesting the open handle closes the window between the check and the read.
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    if digest.hexdigest() != expected:
        raise IntegrityError(
            f"{relative}: sha256 {digest.hexdigest()[:12]}… does not match the "
            f"manifest's {expected[:12]}…; refusing to unpickle"
        )
    handle.seek(0)


def _placeholder(name: str) -> type:
    # Stands in for a missing name so unpickling goes on and every missing name is
    # found in one pass; the half-built object is never returned.
    def accept(self: object, *args: object, **kwargs: object) -> None:
        del self, args, kwargs

    return type(
        name,
        (),
        {"__init__": accept, "__setstate__": accept, "__module__": MAIN},
    )


class MainNames:
    """Resolves `__main__.<name>` for an unpickler.

    With a mapping (a published version), each name comes from the module the
    mapping records. Without one (publishing), each name is looked up in the given
    modules, in order, and what was found becomes the mapping.
    """

    def __init__(
        self, modules: Sequence[str], mapping: Mapping[str, str] | None
    ) -> None:
        self._modules = list(modules)
        self._mapping = dict(mapping) if mapping is not None else None
        self.found: dict[str, str] = {}
        """Name -> module of every `__main__` name resolved so far."""
        self.missing: set[str] = set()
        self.ambiguous: dict[str, list[str]] = {}

    def resolve(self, name: str) -> Any:
        """The object `__main__.<name>` stands for (a stand-in if it is missing)."""
        if self._mapping is None:
            candidates = self._modules
        else:
            candidates = [self._mapping[name]] if name in self._mapping else []
        holders: dict[int, tuple[Any, list[str]]] = {}
        for module_name in candidates:
            value = getattr(importlib.import_module(module_name), name, None)
            if value is not None:
                holders.setdefault(id(value), (value, []))[1].append(module_name)
        if not holders:
            self.missing.add(name)
            return _placeholder(name)
        if len(holders) > 1:
            self.ambiguous[name] = sorted(
                m for _, names in holders.values() for m in names
            )
        value, module_names = next(iter(holders.values()))
        defining = getattr(value, "__module__", None)
        self.found[name] = defining if defining in module_names else module_names[0]
        return value

    def raise_for_problems(self, source: str) -> None:
        """Raise when a name was missing or defined differently in two modules.

        Raises:
            MissingCode: some names were missing.
            ManifestError: a name has two different definitions.
        """
        if self.missing:
            names = sorted(self.missing)
            where = (
                "the manifest does not map to a code module"
                if self._mapping is not None
                else "no code module defines"
            )
            raise MissingCode(
                f"{source} refers to names defined in a notebook or script "
                f"(__main__) that {where}: {', '.join(names)}",
                names,
            )
        if self.ambiguous:
            described = "; ".join(
                f"{name} in {', '.join(modules)}"
                for name, modules in sorted(self.ambiguous.items())
            )
            raise ManifestError(
                f"{source}: __main__ names defined differently in several code "
                f"modules: {described}"
            )


def unpickle(
    handle: IO[bytes],
    filename: str,
    modules: Sequence[CodeModule],
    main_names: Mapping[str, str] | None,
) -> tuple[Any, dict[str, str]]:
    """Unpickle a joblib or plain pickle with `modules` importable.

    `main_names` maps the pickle's `__main__` names to modules; None looks every such
    name up in `modules` (in order). Returns the object and the mapping used.

    Raises:
        MissingCode: `__main__` names nothing provides (all of them are named).
        ManifestError: a joblib format this loader does not read, or a name with two
            definitions.
    """
    # joblib reads its compressed and uncompressed forms through these two; the
    # version is pinned by the lock file.
    from joblib.numpy_pickle import (
        NumpyUnpickler,
        _validate_fileobject_and_memmap,
    )

    resolver = MainNames([module.name for module in modules], main_names)

    class Unpickler(NumpyUnpickler):  # type: ignore[misc]
        def find_class(self, module: str, name: str) -> Any:
            if module == MAIN:
                return resolver.resolve(name)
            return super().find_class(module, name)

    with (
        importable(modules),
        _validate_fileobject_and_memmap(handle, filename, None) as (stream, _),
    ):
        if isinstance(stream, str):
            raise ManifestError(
                f"{filename}: written by joblib before 0.10; load and dump it again"
            )
        unpickler = Unpickler(filename, stream, ensure_native_byte_order=True)
        try:
            value = unpickler.load()
        except Exception as exc:
            # A stand-in can upset the objects built around it; the missing names
            # are then the error worth reporting.
            if resolver.missing:
                try:
                    resolver.raise_for_problems(filename)
                except MissingCode as missing:
                    raise missing from exc
            raise
    resolver.raise_for_problems(filename)
    return value, dict(sorted(resolver.found.items()))


def load_skops(
    handle: IO[bytes], trusted: Iterable[str], modules: Sequence[CodeModule]
) -> Any:
    """Read a `.skops` file, allowing skops' defaults and the `trusted` types only.

    Raises:
        ManifestError: the file needs types that are not trusted.
    """
    import skops.io as sio  # type: ignore[import-untyped]
    from skops.io.exceptions import (  # type: ignore[import-untyped]
        UntrustedTypesFoundException,
    )

    with importable(modules):
        try:
            return sio.load(handle, trusted=list(trusted))
        except UntrustedTypesFoundException as exc:
            raise ManifestError(f"untrusted types in the .skops file: {exc}") from exc


def untrusted_types(path: Path) -> list[str]:
    """The types in a `.skops` file that skops does not trust by default."""
    import skops.io as sio

    return sorted(sio.get_untrusted_types(file=path))


def is_trustable(type_name: str, importer: Callable[[str], Any] | None = None) -> bool:
    """Whether a type may be trusted without the publisher naming it.

    Classes of scikit-learn, NumPy and SciPy are data containers and estimators
    whose loading runs their own library's code only; functions (which a
    `FunctionTransformer` would call on request data) and everything from other
    modules need the publisher's word.
    """
    if type_name in TRUSTABLE_BUILTINS:
        return True
    module_name, _, attribute = type_name.rpartition(".")
    if module_name.split(".", 1)[0] not in TRUSTABLE_PACKAGES:
        return False
    load = importer or importlib.import_module
    try:
        value = getattr(load(module_name), attribute)
    except (ImportError, AttributeError):
        return False
    return isinstance(value, type)
