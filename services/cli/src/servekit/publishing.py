"""Publishing models trained elsewhere: a SavedModel folder, a pickle or a `.skops` file.

Every argument is checked before any file is opened (a pickle is code: a bad model
name must not cost an unpickling). A pickle is loaded with the `--code` modules
importable from their bytes, and its `__main__.<name>` references (the helpers a
notebook defined) are resolved from them; the mapping goes into the manifest so
every loader resolves them the same way. Feature dtypes come from the fitted
pipeline or the example rows, never from a guess, and the example rows go through
`predict` before the version is written.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelregistry import (
    CodeModule,
    Draft,
    ManifestError,
    MissingCode,
    Registry,
    VersionExists,
    check_model_name,
    is_trustable,
    modules_from_files,
    unpickle,
    untrusted_types,
)
from rich.progress import Progress, SpinnerColumn, TextColumn

from servekit.compiling import Mode, compile_draft, write_heldout
from servekit.console import CommandError
from servekit.describing import (
    read_example_rows,
    saved_model_signatures,
    sklearn_description,
)

PICKLE_ARTIFACT = "model.joblib"
SKOPS_ARTIFACT = "model.skops"
SKOPS_SUFFIX = ".skops"
CODE_DIR = "code"


@dataclass
class PublishRequest:
    """What `servekit models publish` was asked to do."""

    name: str
    path: Path
    version: int | None = None
    example: Path | None = None
    code: list[Path] = field(default_factory=list)
    trust: list[str] = field(default_factory=list)
    """Types of a `.skops` file the publisher trusts beyond the trustable ones."""
    write_skops: bool = False
    """Write the `.skops` form of a pickle next to it."""
    compile_mode: Mode | None = "exact"
    """Compile a scikit-learn model and run the parity gate (None: do not)."""
    heldout: Path | None = None
    """CSV or JSON rows kept as `heldout.json` for the parity gate."""


@dataclass
class Published:
    """The version a publish made and what the publisher should be told."""

    version: int
    notes: list[str] = field(default_factory=list)


def check_request(registry: Registry, request: PublishRequest) -> list[dict[str, Any]]:
    """Validate every argument without opening the model file; return example rows.

    Raises:
        CommandError: an argument is unusable.
        RegistryError: the name is invalid or the version taken.
    """
    check_model_name(request.name)
    if (
        request.version is not None
        and request.name in registry.models()
        and request.version in registry.versions(request.name)
    ):
        raise VersionExists(
            f"model {request.name!r} already has version {request.version}"
        )
    path = request.path
    if not path.exists():
        raise CommandError(f"{path} not found")
    is_skops = path.is_file() and path.suffix == SKOPS_SUFFIX
    if path.is_dir() and (request.code or request.trust or request.write_skops):
        raise CommandError(
            "--code, --trust and --write-skops apply to scikit-learn files, "
            f"not to the SavedModel folder {path}"
        )
    if request.trust and not is_skops:
        raise CommandError(f"--trust applies to .skops files; {path} is not one")
    if request.write_skops and is_skops:
        raise CommandError(f"--write-skops: {path} is a .skops file already")
    check_code_files(request.code)
    if request.heldout is not None:
        if path.is_dir():
            raise CommandError("--heldout applies to scikit-learn files")
        read_example_rows(request.heldout)
    return read_example_rows(request.example) if request.example else []


def check_code_files(code: list[Path]) -> None:
    """Refuse `--code` files that cannot be imported, by name, exactly as given.

    Raises:
        CommandError: a file is missing, not a `.py` module, not importable by its
            name, shares its base name with another, or would shadow a module.
    """
    seen: dict[str, Path] = {}
    for module in code:
        if not module.is_file() or module.suffix != ".py":
            raise CommandError(f"--code {module}: not a Python module file")
        stem = module.stem
        if not stem.isidentifier():
            raise CommandError(
                f"--code {module}: {stem!r} is not a name Python can import; "
                "rename the file"
            )
        if stem in seen:
            raise CommandError(
                f"--code {seen[stem]} and --code {module} have one base name "
                f"({module.name}) and would replace one another in {CODE_DIR}/; "
                "rename one of them"
            )
        seen[stem] = module
        if stem in sys.stdlib_module_names:
            raise CommandError(
                f"--code {module}: {stem} is a standard library module; rename the "
                "file so it cannot shadow it"
            )
        spec = importlib.util.find_spec(stem)
        if spec is not None and (
            spec.origin is None or Path(spec.origin).resolve() != module.resolve()
        ):
            raise CommandError(
                f"--code {module}: a module named {stem} is already importable "
                f"({spec.origin or 'a package'}); rename the file so it cannot "
                "shadow it"
            )


def publish_external(registry: Registry, request: PublishRequest) -> Published:
    """Publish a SavedModel folder, a pickle or a `.skops` file with a computed manifest.

    Raises:
        CommandError: an argument is unusable, the model cannot be loaded or
            described, or its example rows fail `predict`.
        RegistryError: the registry refuses the version.
    """
    examples = check_request(registry, request)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), transient=True
    ) as bar:
        if request.path.is_dir():
            return _publish_saved_model(registry, request, examples, bar)
        modules = modules_from_files(request.code)
        bar.add_task(f"loading {request.path} to describe it")
        fields: dict[str, Any]
        if request.path.suffix == SKOPS_SUFFIX:
            estimator, trusted = _load_skops(request, modules)
            fields = {"artifact": SKOPS_ARTIFACT, "trusted_types": trusted}
        else:
            estimator, mapping = _load_pickle(request.path, modules)
            fields = {"artifact": PICKLE_ARTIFACT}
            if mapping:
                fields["main_names"] = mapping
        fields.update(sklearn_description(estimator, examples))
        bar.add_task("running predict on the example rows")
        smoke_test(estimator, fields)
        notes: list[str] = []
        skops_form: bytes | None = None
        if fields["artifact"] == PICKLE_ARTIFACT:
            bar.add_task("checking the types for a .skops form")
            note, skops_form = _skops_offer(estimator, request)
            notes.append(note)
        bar.add_task("publishing")
        with registry.publish(
            request.name, framework="sklearn", version=request.version
        ) as draft:
            shutil.copyfile(request.path, draft.path / fields["artifact"])
            if request.code:
                (draft.path / CODE_DIR).mkdir()
                for module in request.code:
                    shutil.copyfile(module, draft.path / CODE_DIR / module.name)
                fields["code_dir"] = CODE_DIR
            draft.manifest.update(fields)
            _compile(draft, estimator, request, bar)
    assert draft.version is not None
    if skops_form is not None:
        target = request.path.with_suffix(SKOPS_SUFFIX)
        target.write_bytes(skops_form)
        notes.append(
            f"wrote {target}: the same model in a form that loads without running "
            f"code; publish it with: servekit models publish {request.name} {target}"
        )
    return Published(draft.version, notes)


def _compile(draft: Draft, estimator: Any, request: PublishRequest, bar: Any) -> None:
    heldout = read_example_rows(request.heldout) if request.heldout else []
    if heldout:
        write_heldout(draft.path, heldout)
    if request.compile_mode is not None:
        bar.add_task(f"compiling ({request.compile_mode}), running the parity gate")
        compile_draft(draft, estimator, heldout, request.compile_mode)


def _publish_saved_model(
    registry: Registry,
    request: PublishRequest,
    examples: list[dict[str, Any]],
    bar: Progress,
) -> Published:
    bar.add_task(f"reading SavedModel signatures from {request.path}")
    signatures = saved_model_signatures(request.path)
    bar.add_task(f"copying {request.path} into the registry")
    with registry.publish(
        request.name, framework="tensorflow", version=request.version
    ) as draft:
        shutil.copytree(request.path, draft.path, dirs_exist_ok=True)
        draft.manifest.update(
            artifact="saved_model.pb",
            signatures={k: v.model_dump() for k, v in signatures.items()},
            examples=examples[:5],
        )
    assert draft.version is not None
    return Published(draft.version)


def _load_pickle(path: Path, modules: list[CodeModule]) -> tuple[Any, dict[str, str]]:
    try:
        with path.open("rb") as handle:
            return unpickle(handle, str(path), modules, None)
    except MissingCode as exc:
        raise CommandError(
            f"{exc}. Put their definitions (with the imports they use) in a Python "
            "file and pass it with --code FILE (repeatable); each name is looked up "
            "in every --code module"
        ) from exc
    except ManifestError as exc:
        raise CommandError(str(exc)) from exc
    except Exception as exc:  # unpickling can raise anything the pickle's code raises
        raise CommandError(
            f"{path}: cannot load the pickle: {type(exc).__name__}: {exc}"
        ) from exc


def _load_skops(
    request: PublishRequest, modules: list[CodeModule]
) -> tuple[Any, list[str]]:
    from modelregistry.loading import load_skops

    path = request.path
    try:
        needed = untrusted_types(path)
    except Exception as exc:  # skops raises its own errors for a bad archive
        raise CommandError(f"{path}: not a readable .skops file: {exc}") from exc
    refused = [t for t in needed if t not in request.trust and not is_trustable(t)]
    if refused:
        raise CommandError(
            f"{path} holds types that are not trusted without your word: "
            f"{', '.join(refused)}. Review them and pass --trust TYPE for each one "
            "you trust (loading them can run their code)"
        )
    try:
        with path.open("rb") as handle:
            estimator = load_skops(handle, needed, modules)
    except Exception as exc:  # the trusted types' own code may raise anything
        raise CommandError(
            f"{path}: cannot load the .skops file: {type(exc).__name__}: {exc}"
        ) from exc
    return estimator, needed


def _skops_offer(estimator: Any, request: PublishRequest) -> tuple[str, bytes | None]:
    """A note on the `.skops` form of a pickle, and its bytes when asked to write it.

    Raises:
        CommandError: `--write-skops` was given but some types are not trustable.
    """
    import skops.io as sio  # type: ignore[import-untyped]

    target = request.path.with_suffix(SKOPS_SUFFIX)
    try:
        data: bytes = sio.dumps(estimator)
        needed = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops refuses objects it cannot represent
        message = f"no .skops form: skops cannot save this model ({exc})"
        if request.write_skops:
            raise CommandError(f"--write-skops: {message}") from exc
        return message, None
    refused = sorted(t for t in needed if not is_trustable(t))
    if refused:
        message = (
            f"no .skops form: these types are not trustable (loading them runs "
            f"their code): {', '.join(refused)}"
        )
        if request.write_skops:
            raise CommandError(f"--write-skops: {message}")
        return message, None
    if request.write_skops:
        return "", data
    return (
        f"every type in {request.path.name} is trustable: --write-skops writes "
        f"{target.name} next to it, a form that loads without running code",
        None,
    )


def smoke_test(estimator: Any, fields: dict[str, Any]) -> None:
    """Run the example rows through `predict` (and `predict_proba` when offered).

    Raises:
        CommandError: the estimator fails on its own example rows.
    """
    examples: list[dict[str, Any]] = fields.get("examples", [])
    if not examples:
        return
    try:
        features = example_features(examples, fields)
    except (ValueError, TypeError) as exc:
        raise CommandError(
            f"smoke test failed: the example rows do not fit the feature dtypes: "
            f"{exc}; nothing was published"
        ) from exc
    methods = ["predict"]
    if "predict_proba" in fields.get("signatures", {}):
        methods.append("predict_proba")
    for method in methods:
        try:
            getattr(estimator, method)(features)
        except Exception as exc:  # the estimator's own code may raise anything
            raise CommandError(
                f"smoke test failed: {method} on the example rows raised "
                f"{type(exc).__name__}: {exc}; nothing was published"
            ) from exc


def example_features(examples: list[dict[str, Any]], fields: dict[str, Any]) -> Any:
    """The example rows as the model server would hand them to the estimator."""
    import numpy as np
    import pandas as pd

    features: list[dict[str, str]] = fields.get("features", [])
    if not features:
        return np.asarray([list(row.values()) for row in examples], dtype=np.float64)
    columns: dict[str, Any] = {}
    for feature in features:
        values = [row.get(feature["name"]) for row in examples]
        if feature["dtype"] == "string":
            column = np.empty(len(values), dtype=object)
            column[:] = [v if v is None else str(v) for v in values]
        else:
            column = np.asarray([np.nan if v is None else v for v in values]).astype(
                feature["dtype"]
            )
        columns[feature["name"]] = column
    return pd.DataFrame(columns)
