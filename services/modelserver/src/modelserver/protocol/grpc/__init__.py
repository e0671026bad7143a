"""TF Serving's gRPC API (``--port``): PredictionService, ModelService, health."""
