"""Placeholder until the v1 adapter lands."""

from starlette.routing import Route


def v1_routes() -> list[Route]:
    return []
