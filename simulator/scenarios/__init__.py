"""Shipped simulation scenarios (YAML files read with importlib.resources)."""
