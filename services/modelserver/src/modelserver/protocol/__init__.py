"""The transport adapters: REST (``rest``) and gRPC (``grpc``).

They parse, validate, convert and map errors, and do nothing else: every call
goes to :class:`modelserver.dataplane.DataPlane`.
"""
