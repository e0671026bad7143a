"""Where each request goes: the routes file, canary splits, shadows, sticky keys."""
