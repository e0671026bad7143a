"""Logs (JSON lines with a request id) and Prometheus metrics of the model server."""
