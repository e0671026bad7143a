"""TF Serving's names and messages that clients and the gateway rely on.

The default signature is what a request without `signature_name` runs
(`kDefaultServingSignatureDefKey`); the unknown-label message is how TF Serving
(`ServerCore::GetModelVersionForLabel`) refuses a label no version carries, with
INVALID_ARGUMENT. The model server writes that message, and the gateway reads it
to fall back from a canary label that has vanished, so both use this module.
"""

from __future__ import annotations

from servekit_protocol.status import Code

DEFAULT_SIGNATURE = "serving_default"
"""The signature a request runs when it names none."""

UNKNOWN_LABEL_PREFIX = "Unrecognized servable version label: "
"""The start of TF Serving's INVALID_ARGUMENT message for an unassigned label."""


def unknown_label_message(label: str) -> str:
    """TF Serving's message for a request naming an unassigned label."""
    return UNKNOWN_LABEL_PREFIX + label


def is_unknown_label(code: int, message: str) -> bool:
    """Whether a refusal (numeric gRPC code and message) is TF Serving's
    unknown-label error."""
    return code == Code.INVALID_ARGUMENT and message.startswith(UNKNOWN_LABEL_PREFIX)
