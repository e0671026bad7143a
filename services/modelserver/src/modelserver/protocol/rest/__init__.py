"""TF Serving's REST API (``--rest_api_port``) as a raw ASGI application."""
