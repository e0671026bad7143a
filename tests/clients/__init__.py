"""Scripts run by the Open Inference Protocol clients' own interpreter (.venv-clients)."""
