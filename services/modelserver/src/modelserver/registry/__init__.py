"""Model versions on disk and in memory: scanning, loading, warmup, policies,
labels, states and the pollers that keep them in sync with the disk and config."""
