"""Every ServingError answers the same over REST and gRPC: one table (TF Serving's,
in servekit_protocol, shared with the gateway), two transports."""

from __future__ import annotations

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from modelserver import errors
from modelserver.errors import ServingError
from modelserver.protocol.rest.errors import PayloadTooLarge
from servekit_protocol import messages, tensors
from servekit_protocol.grpc_codes import from_grpc, to_grpc
from servekit_protocol.services import PredictionServiceStub
from servekit_protocol.status import HTTP_STATUS_FOR_CODE, Code, agrees

from .conftest import FakeDataPlane


def _all_subclasses(base: type[ServingError]) -> list[type[ServingError]]:
    found: list[type[ServingError]] = []
    for subclass in base.__subclasses__():
        found.append(subclass)
        found.extend(_all_subclasses(subclass))
    return found


ERROR_CLASSES = sorted(
    {cls for cls in _all_subclasses(ServingError) if cls.__module__ == errors.__name__}
    | {ServingError},
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("error_class", ERROR_CLASSES, ids=lambda cls: cls.__name__)
async def test_rest_and_grpc_agree(
    error_class: type[ServingError],
    dataplane: FakeDataPlane,
    rest: httpx.AsyncClient,
    channel: grpc.aio.Channel,
) -> None:
    message = f"{error_class.__name__} happened"
    dataplane.error = error_class(message)

    response = await rest.post("/v1/models/half:predict", json={"instances": [1.0]})
    assert response.status_code == error_class.status
    assert response.json() == {"error": message}

    request = messages.PredictRequest()
    request.model_spec.name = "half"
    tensors.from_ndarray(np.array([1.0], np.float32), into=request.inputs["x"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await PredictionServiceStub(channel).Predict(request, timeout=10)
    assert caught.value.code() == to_grpc(error_class.grpc_code)
    assert caught.value.details() == message
    # ... and the two agree through the single table.
    assert HTTP_STATUS_FOR_CODE[from_grpc(caught.value.code())] == response.status_code


def test_the_table_maps_tf_servings_key_codes() -> None:
    assert errors.ModelNotFound.status == 404
    assert errors.InvalidInput.status == 400
    assert errors.Overloaded.status == 503
    assert errors.Overloaded.grpc_code is Code.UNAVAILABLE
    assert errors.DeadlineExceeded.status == 504
    assert errors.FailedPrecondition.status == 400
    assert errors.PredictSignatureNotFound.status == 400
    # Over HTTP a body above the limit is 413, a documented refinement of 429.
    assert PayloadTooLarge.status == 413
    assert agrees(PayloadTooLarge.grpc_code, PayloadTooLarge.status)
