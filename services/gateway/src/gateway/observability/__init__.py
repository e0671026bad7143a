"""JSON-line logs with the request context, and the gateway's Prometheus metrics."""
