"""A gRPC call's request id bound by its transport before a large message is
decoded (:meth:`servekit_protocol.grpcweb_server.WebContext.bind_request_id`):
the id the handler then binds from the metadata is the same."""

from __future__ import annotations

import contextvars

from servekit_protocol.grpcweb_server import WebContext
from servekit_protocol.logs import accept_request_id, context_fields

Metadata = tuple[tuple[str, str | bytes], ...]


def _bound(metadata: Metadata) -> tuple[str, str, Metadata]:
    """(the id bound before decoding, the id a handler binds from the
    context's metadata afterwards, that metadata)."""

    def run() -> tuple[str, str, Metadata]:
        context = WebContext(metadata, None)
        context.bind_request_id("grpc")
        early = str(context_fields()["request_id"])
        seen = context.invocation_metadata()
        incoming = next((v for k, v in seen if k == "x-request-id"), None)
        return early, accept_request_id(incoming), seen

    return contextvars.copy_context().run(run)


def test_the_callers_id_is_bound_and_the_metadata_left_alone() -> None:
    metadata: Metadata = (("a-bin", b"\x00"), ("x-request-id", "rid-7"))
    assert _bound(metadata) == ("rid-7", "rid-7", metadata)


def test_the_first_of_two_ids_is_the_one_a_handler_reads() -> None:
    metadata: Metadata = (("x-request-id", "one"), ("x-request-id", "two"))
    assert _bound(metadata)[:2] == ("one", "one")


def test_a_fresh_id_goes_into_the_metadata() -> None:
    for metadata in ((("other", "x"),), (("x-request-id", "a\nb"), ("other", "x"))):
        early, handler, seen = _bound(metadata)
        assert early == handler and len(early) == 32
        assert seen == (("other", "x"), ("x-request-id", early))
