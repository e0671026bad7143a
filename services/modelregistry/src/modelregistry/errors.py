"""The registry's error tree: every failure the registry reports carries an HTTP status."""

from __future__ import annotations

from http import HTTPStatus


class RegistryError(Exception):
    """Base of every registry failure; `status` is what a server would answer."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR


class InvalidName(RegistryError):
    """A model name, version or label that the layout does not allow."""

    status = HTTPStatus.BAD_REQUEST


class ModelNotFound(RegistryError):
    """No model folder of that name."""

    status = HTTPStatus.NOT_FOUND


class VersionNotFound(RegistryError):
    """The model exists but not that version (or label)."""

    status = HTTPStatus.NOT_FOUND


class VersionExists(RegistryError):
    """Publishing to a version number that is already taken."""

    status = HTTPStatus.CONFLICT


class LabelInUse(RegistryError):
    """Deleting a version that a label still points at."""

    status = HTTPStatus.CONFLICT


class ManifestError(RegistryError):
    """A manifest that is missing, unreadable or does not match the schema."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class IntegrityError(RegistryError):
    """Files whose sha256 differs from the manifest: refused, never unpickled."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class RegistryNotWritable(RegistryError):
    """The registry folder cannot be created or written."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class MissingCode(RegistryError):
    """A pickle refers to `__main__` names that no code module provides."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names
        """Every missing `__main__` name, sorted."""
