"""The servekit gateway: one front door (TF Serving v1 REST, Open Inference Protocol v2,
typed per-model endpoints, TF Serving gRPC) in front of TF Serving-compatible backends,
with routing, canary and shadow rollouts, auth, limits and metrics. No TensorFlow."""

__version__ = "0.1.0"
