"""The gRPC adapter: TF Serving's PredictionService and ModelService on port 8001."""
