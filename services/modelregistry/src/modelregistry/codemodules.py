"""A version's own Python modules (its `code/` folder), imported only from verified bytes.

The folder never goes on `sys.path`: each module listed in the manifest is read once,
its bytes checked against the manifest's sha256, and served to `import` by a finder
that knows only those modules. A file the manifest does not list (a package
`__init__.py`, a `.pth`, a shadowing `json.py`) is therefore never found, and a
module is compiled from the very bytes that were checked, so nothing writes
`__pycache__` into the version folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from modelregistry.errors import IntegrityError
from modelregistry.manifest import Manifest

PYTHON_SUFFIX = ".py"

# sys.meta_path and sys.modules are process-wide: two versions that ship a module of
# the same name must not load at the same time.
_IMPORT_LOCK = threading.RLock()


@dataclass(frozen=True)
class CodeModule:
    """One module of a version's code folder: its import name and checked source."""

    name: str
    origin: str
    """Where the file lives, for tracebacks."""
    source: bytes


def module_name(relative: str, code_dir: str) -> str | None:
    """The import name of a manifest path inside `code_dir` (None if not a module).

    Only top-level `.py` files are modules; anything below a sub-folder is data.
    """
    prefix = code_dir.rstrip("/") + "/"
    if not relative.startswith(prefix) or not relative.endswith(PYTHON_SUFFIX):
        return None
    inner = relative[len(prefix) : -len(PYTHON_SUFFIX)]
    if "/" in inner or not inner.isidentifier():
        return None
    return inner


def listed_modules(manifest: Manifest) -> dict[str, str]:
    """Import name -> manifest path of every module the version ships."""
    if not manifest.code_dir:
        return {}
    found: dict[str, str] = {}
    for relative in manifest.files:
        name = module_name(relative, manifest.code_dir)
        if name is not None:
            found[name] = relative
    return found


def read_code_modules(version_dir: Path, manifest: Manifest) -> list[CodeModule]:
    """Read every listed module once and check its bytes against the manifest.

    Raises:
        IntegrityError: a module is missing or its bytes differ from the manifest.
    """
    modules: list[CodeModule] = []
    for name, relative in sorted(listed_modules(manifest).items()):
        path = version_dir / relative
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"{relative}: cannot read: {exc.strerror}") from exc
        if hashlib.sha256(source).hexdigest() != manifest.files[relative].sha256:
            raise IntegrityError(
                f"{relative}: sha256 does not match the manifest; refusing to import"
            )
        modules.append(CodeModule(name, str(path), source))
    return modules


def modules_from_files(paths: Sequence[Path]) -> list[CodeModule]:
    """Modules from files a publisher names (`--code`), before they are copied."""
    return [
        CodeModule(path.stem, str(path.resolve()), path.read_bytes()) for path in paths
    ]


class _VerifiedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and executes exactly the modules it was given, from their bytes."""

    def __init__(self, modules: Mapping[str, CodeModule]) -> None:
        self._modules = dict(modules)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        del target  # no reload of an existing module object
        module = self._modules.get(fullname)
        if module is None or path is not None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=module.origin)
        spec.has_location = True
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        del spec  # the default module object will do

    def exec_module(self, module: ModuleType) -> None:
        code = self._modules[module.__name__]
        module.__file__ = code.origin
        exec(compile(code.source, code.origin, "exec"), module.__dict__)


@contextlib.contextmanager
def importable(modules: Sequence[CodeModule]) -> Iterator[None]:
    """Make `modules` (and nothing else of their folder) importable inside the block.

    Modules of the same names imported before (another version's) are dropped
    first, so each version gets the classes it was published with; the ones
    imported here stay in `sys.modules` after the block for objects that look
    their module up later.
    """
    by_name = {module.name: module for module in modules}
    finder = _VerifiedFinder(by_name)
    with _IMPORT_LOCK:
        for name in by_name:
            sys.modules.pop(name, None)
        sys.meta_path.insert(0, finder)
        try:
            yield
        finally:
            sys.meta_path.remove(finder)
