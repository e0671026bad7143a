"""Errors of `servekit deploy`; each is reported as one line by the CLI."""

from __future__ import annotations

from servekit.console import CommandError


class DeployError(CommandError):
    """Base of every deploy failure."""


class ProjectNotFound(DeployError):
    """Not inside a servekit checkout (no k8s/ and deploy/ folders)."""


class ToolMissing(DeployError):
    """An external program (kubectl, docker compose, git) is not installed."""


class ToolFailed(DeployError):
    """An external program ran and failed."""


class EngineUnavailable(DeployError):
    """No Docker engine answers."""


class BuildFailed(DeployError):
    """The Docker engine refused or failed an image build or push."""


class RoutesFileError(DeployError):
    """The gateway routing file cannot be read, parsed or written."""


class RolloutError(DeployError):
    """A rollout request that cannot be carried out as asked."""
