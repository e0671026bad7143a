"""Batch prediction jobs: score a file of instances with one registry version.

``sources`` streams CSV, JSON Lines and Parquet rows in bounded chunks; ``predictors``
turn a chunk into predictions, in this process with the model server's own runtimes
or against a running endpoint; ``outputs`` writes Vertex-shaped result and error
shards atomically; ``job`` plans the shards, skips those already written and keeps
the job manifest.
"""
