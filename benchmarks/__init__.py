"""Side-by-side benchmarks of servekit's serving path (``make bench``).

Not tests: they measure throughput and latency of the servekit model server, the
gateway in front of it, Seldon MLServer, a plain FastAPI app and the model called
in-process, on loopback, and write a Markdown table and raw JSON to
``bench-results/``. See ``benchmarks/README.md``.

This package must stay importable by a bare interpreter (the MLServer venv runs one
of its files), so nothing is imported here.
"""
