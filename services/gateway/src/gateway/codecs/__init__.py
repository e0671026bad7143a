"""Wire formats the gateway speaks besides TF Serving's own (which servekit_protocol has)."""
