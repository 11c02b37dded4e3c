"""Integrations of sserelay with web frameworks (each an optional extra)."""
