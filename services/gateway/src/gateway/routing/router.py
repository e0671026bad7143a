"""Turn (model, version, label, sticky key) into the target(s) of one request.

Pure: no I/O. Label availability comes from a callback (the registry when the gateway
can read it), so a canary label cleared by `servekit models promote` stops drawing
traffic at once instead of failing requests.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.routing.config import RouteConfig, RoutesConfig

STABLE_ROLE = "stable"
CANARY_ROLE = "canary"
EXPLICIT_ROLE = "explicit"
DEFAULT_ROLE = "default"

LabelLookup = Callable[[str], Mapping[str, int] | None]
"""Model name -> its labels, or None when the gateway cannot know them."""

BackendLookup = Callable[[str], str | None]
"""Model name -> the backend its framework is served by, or None."""


@dataclass(frozen=True, slots=True)
class Target:
    """One backend call's destination and the ModelSpec version/label to send."""

    model: str
    backends: tuple[str, ...]
    version: int | None
    label: str | None
    role: str


@dataclass(frozen=True, slots=True)
class Plan:
    """Where to answer from, and where to mirror (shadow mode) if anywhere."""

    primary: Target
    shadow: Target | None = None


def split_point(model: str, sticky_value: str) -> float:
    """A stable number in [0, 1) for a sticky key, independent across models."""
    digest = hashlib.blake2b(
        f"{model}\x00{sticky_value}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / 2.0**64


class Router:
    """Plans requests from the current routes; swap `routes` to reload."""

    def __init__(
        self,
        routes: RoutesConfig,
        default_backend: str,
        labels_of: LabelLookup | None = None,
        rng: random.Random | None = None,
        framework_backend_of: BackendLookup | None = None,
    ) -> None:
        self.routes = routes
        self.default_backend = default_backend
        self._labels_of = labels_of
        self._framework_backend_of = framework_backend_of
        self._rng = rng if rng is not None else random.Random()

    def default_backend_of(self, model: str) -> str:
        """The backend of a model no route names (by framework when configured)."""
        if self._framework_backend_of is not None:
            backend = self._framework_backend_of(model)
            if backend is not None:
                return backend
        return self.default_backend

    def route_of(self, model: str) -> RouteConfig | None:
        return self.routes.routes.get(model)

    def backends_of(self, model: str) -> tuple[str, ...]:
        route = self.route_of(model)
        default = self.default_backend_of(model)
        if route is None:
            return (default,)
        return route.addresses(default)

    def plan(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Plan:
        """Choose targets. A client naming a version or label gets exactly that."""
        route = self.route_of(model)
        default = self.default_backend_of(model)
        if route is None:
            return Plan(Target(model, (default,), version, label, DEFAULT_ROLE))
        backends = route.addresses(default)
        if version is not None or label is not None:
            if (
                route.canary is not None
                and route.canary.label is not None
                and label == route.canary.label
            ):
                backends = route.canary_addresses(default)
            return Plan(Target(model, backends, version, label, EXPLICIT_ROLE))
        labels = self._labels_of(model) if self._labels_of is not None else None
        stable = self._stable_target(model, route, backends, labels)
        canary = self._canary_target(model, route, labels, default)
        if canary is None or route.canary is None or route.canary.weight <= 0:
            return Plan(stable)
        if self._draw(model, route, headers) >= route.canary.weight:
            return Plan(stable)
        if route.shadow:
            return Plan(stable, shadow=canary)
        return Plan(canary)

    def stable_target(self, model: str) -> Target:
        """The stable side of a model's route, whatever the canary draw."""
        route = self.route_of(model)
        default = self.default_backend_of(model)
        if route is None:
            return Target(model, (default,), None, None, DEFAULT_ROLE)
        labels = self._labels_of(model) if self._labels_of is not None else None
        return self._stable_target(model, route, route.addresses(default), labels)

    def _stable_target(
        self,
        model: str,
        route: RouteConfig,
        backends: tuple[str, ...],
        labels: Mapping[str, int] | None,
    ) -> Target:
        if isinstance(route.stable, int):
            return Target(model, backends, route.stable, None, STABLE_ROLE)
        if route.stable is None or (labels is not None and route.stable not in labels):
            # No stable label yet (e.g. a model copied in by hand): serve the latest.
            return Target(model, backends, None, None, STABLE_ROLE)
        return Target(model, backends, None, route.stable, STABLE_ROLE)

    def _canary_target(
        self,
        model: str,
        route: RouteConfig,
        labels: Mapping[str, int] | None,
        default: str,
    ) -> Target | None:
        canary = route.canary
        if canary is None:
            return None
        backends = route.canary_addresses(default)
        if canary.version is not None:
            return Target(model, backends, canary.version, None, CANARY_ROLE)
        if labels is not None:
            if canary.label not in labels:
                return None
            stable_version = (
                route.stable
                if isinstance(route.stable, int)
                else labels.get(route.stable or "")
            )
            if labels[canary.label or ""] == stable_version:
                # Canary and stable are the same version: nothing to compare or split.
                return None
        return Target(model, backends, None, canary.label, CANARY_ROLE)

    def _draw(
        self, model: str, route: RouteConfig, headers: Mapping[str, str] | None
    ) -> float:
        if route.sticky_header is not None and headers is not None:
            value = headers.get(route.sticky_header.lower())
            if value:
                return split_point(model, value)
        return self._rng.random()
