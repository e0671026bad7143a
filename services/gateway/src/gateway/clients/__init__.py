"""The only way the gateway talks to model servers: typed gRPC clients with deadlines,
retries and a circuit breaker per backend."""
