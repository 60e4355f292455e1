"""Adapters: stock in from store systems, each its own process (README.md)."""
