"""API keys (stored hashed, scoped per model) and per-key rate limits."""
