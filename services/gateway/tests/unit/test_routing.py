from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
from gateway.routing.config import RoutesFileError, load_routes, parse_routes
from gateway.routing.router import (
    CANARY_ROLE,
    DEFAULT_ROLE,
    EXPLICIT_ROLE,
    STABLE_ROLE,
    Router,
    split_point,
)

DEPLOY_STYLE = """
routes:
  tabular:
    backend: "modelserver:8500"
    stable: "stable"
    canary: {label: "canary", weight: 0.1}
    shadow: false
    sticky_header: "x-user-id"
"""


def canary_router(
    weight: float,
    labels: Mapping[str, int] | None = None,
    rng: random.Random | None = None,
    **route: object,
) -> Router:
    """Model `m` split between labels `stable` and, with `weight`, `canary`
    (versions 1 and 2 unless `labels` says otherwise); `route` adds to its entry."""
    entry = {"stable": "stable", "canary": {"label": "canary", "weight": weight}}
    known = {"stable": 1, "canary": 2} if labels is None else labels
    return Router(
        parse_routes({"routes": {"m": {**entry, **route}}}),
        "d:1",
        labels_of=lambda _: known,
        rng=rng,
    )


def test_parses_the_deployment_schema(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(DEPLOY_STYLE)
    config = load_routes(path)
    route = config.routes["tabular"]
    assert route.addresses("default:1") == ("modelserver:8500",)
    assert route.stable == "stable"
    assert route.canary is not None and route.canary.weight == 0.1
    assert route.sticky_header == "x-user-id"


def test_missing_and_empty_files_mean_no_routes(tmp_path: Path) -> None:
    assert load_routes(tmp_path / "absent.yaml").routes == {}
    (tmp_path / "empty.yaml").write_text("")
    assert load_routes(tmp_path / "empty.yaml").routes == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"routes": {"m": {"canary": {"weight": 0.5}}}}, "exactly one of label"),
        ({"routes": {"m": {"canary": {"label": "c", "weight": 1.5}}}}, "less than"),
        ({"routes": {"m": {"shadow": True}}}, "needs a canary"),
        ({"routes": {"m": {"backend": "a:1", "backends": ["b:1"]}}}, "not both"),
        ({"routes": {"m": {"typo": 1}}}, "Extra inputs"),
        ({"routes": {"m": {"stable": 0}}}, "positive"),
    ],
)
def test_rejects_invalid_routes(data: object, message: str) -> None:
    with pytest.raises(RoutesFileError, match=message):
        parse_routes(data)


def test_unrouted_model_goes_to_default_backend_as_asked() -> None:
    router = Router(parse_routes(None), "default:8500")
    plan = router.plan("m", 3, None)
    assert plan.primary.backends == ("default:8500",)
    assert plan.primary.version == 3
    assert plan.primary.role == DEFAULT_ROLE
    assert plan.shadow is None


def test_framework_backend_applies_to_unrouted_models() -> None:
    router = Router(
        parse_routes(None),
        "default:8500",
        framework_backend_of=lambda model: "sk:8500" if model == "tab" else None,
    )
    assert router.plan("tab").primary.backends == ("sk:8500",)
    assert router.plan("other").primary.backends == ("default:8500",)


def test_canary_split_matches_weight_within_tolerance() -> None:
    router = canary_router(0.2, rng=random.Random(1234))
    roles = Counter(router.plan("m").primary.role for _ in range(10_000))
    # 4 sigma of a binomial(10000, 0.2) is 160.
    assert abs(roles[CANARY_ROLE] - 2000) < 160
    assert roles[CANARY_ROLE] + roles[STABLE_ROLE] == 10_000


def test_sticky_header_pins_a_key_to_one_side() -> None:
    router = canary_router(0.5, sticky_header="X-User-Id")
    for user in ("alice", "bob", "carol", "dave"):
        sides = {
            router.plan("m", headers={"x-user-id": user}).primary.role
            for _ in range(50)
        }
        assert len(sides) == 1
    users = [f"user-{n}" for n in range(2000)]
    canary = sum(split_point("m", user) < 0.5 for user in users)
    assert abs(canary - 1000) < 4 * (2000 * 0.25) ** 0.5


def test_shadow_answers_from_stable_and_mirrors_to_canary() -> None:
    router = canary_router(1.0, shadow=True)
    plan = router.plan("m")
    assert plan.primary.role == STABLE_ROLE and plan.primary.label == "stable"
    assert plan.shadow is not None and plan.shadow.label == "canary"


def test_missing_labels_fall_back_instead_of_failing() -> None:
    labels: dict[str, int] = {"stable": 3}
    router = canary_router(1.0, labels)
    # The canary label is gone (promoted): everything goes to stable.
    assert router.plan("m").primary.role == STABLE_ROLE
    labels.clear()
    plan = router.plan("m")
    assert plan.primary.label is None and plan.primary.version is None
    labels.update({"stable": 4, "canary": 4})
    assert router.plan("m").primary.role == STABLE_ROLE


def test_explicit_version_or_label_bypasses_the_split() -> None:
    router = Router(
        parse_routes(
            {
                "routes": {
                    "m": {
                        "backend": "a:1",
                        "canary": {"label": "canary", "weight": 1.0, "backend": "c:1"},
                    }
                }
            }
        ),
        "d:1",
    )
    pinned = router.plan("m", 7, None).primary
    assert (pinned.role, pinned.version, pinned.backends) == (
        EXPLICIT_ROLE,
        7,
        ("a:1",),
    )
    labelled = router.plan("m", None, "canary").primary
    assert labelled.backends == ("c:1",)
