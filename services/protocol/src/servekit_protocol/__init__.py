"""TF Serving's wire protocol (protobuf, gRPC, REST JSON) without TensorFlow.

Modules:
    messages: the generated message classes, wire-compatible with TF Serving's.
    services: gRPC stubs, servicer base classes and registration helpers.
    tensors: TensorProto <-> numpy.
    examples: tf.Example <-> Python dicts.
    metadata: SignatureDefMap packing for GetModelMetadata.
    json_codec: TF Serving's REST JSON request and response bodies.
    bodies: gzip request bodies, inflated under a size limit.
    errors: the error tree.
    status: gRPC codes and TF Serving's code -> HTTP status table (no grpc import).
    grpc_codes: status.Code <-> grpc.StatusCode, for the gRPC adapters.
"""
