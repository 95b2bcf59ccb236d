"""exposure-audit: measure unintended memorization of planted secrets (Secret Sharer exposure)."""

__version__ = "0.1.0"
