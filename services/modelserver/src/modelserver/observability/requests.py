"""One request's metrics line, and the mapping of unexpected failures.

Every public dataplane entry point runs inside :func:`observe_request`, so the
request metrics and the error mapping are the same for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelserver.errors import InternalError, ServingError

if TYPE_CHECKING:
    from modelserver.observability.metrics import Metrics
    from modelserver.types import Api

logger = logging.getLogger(__name__)

OK = "OK"


@dataclass
class Observation:
    """What a request's metrics line learns while the request runs."""

    version_text: str = ""
    status: str = OK


@contextlib.contextmanager
def observe_request(
    metrics: Metrics, model: str, api: Api, protocol: str, version_text: str = ""
) -> Iterator[Observation]:
    """Time one request, map unexpected failures to InternalError, record it.

    Raises:
        InternalError: The request failed with an exception that is not a
            ServingError (logged with its traceback).
    """
    started = time.perf_counter()
    observation = Observation(version_text=version_text)
    try:
        yield observation
    except ServingError as exc:
        observation.status = exc.grpc_code.name
        raise
    except Exception as exc:
        observation.status = InternalError.grpc_code.name
        logger.exception("%s failed", api.value)
        raise InternalError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        metrics.observe_request(
            model=model,
            version=observation.version_text,
            api=api,
            protocol=protocol,
            status=observation.status,
            seconds=time.perf_counter() - started,
        )
