"""Framework runtimes: a loaded model version behind one interface (``base.Runtime``).

``sklearn`` serves pickled pipelines described by their manifest; ``tensorflow``
serves SavedModels as graphs in a session. Importing this package imports neither
framework's heavy modules.
"""
