"""The environment `servekit deploy` reads and hands to the tools it runs.

The only module of the package that touches `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def tool_environment(defaults: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus `defaults` for variables it does not set
    (the user's own settings win)."""
    environment = dict(os.environ)
    for name, value in defaults.items():
        environment.setdefault(name, value)
    return environment


def compose_defaults(image_tag: str | None) -> dict[str, str]:
    """Variables docker-compose.yml reads: the caller's uid/gid for containers
    that write to the bind-mounted registry, and the image tag when chosen."""
    defaults = {"SERVEKIT_UID": str(os.getuid()), "SERVEKIT_GID": str(os.getgid())}
    if image_tag:
        defaults["SERVEKIT_IMAGE_TAG"] = image_tag
    return defaults
