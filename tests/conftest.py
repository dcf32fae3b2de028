"""Fixtures and shared steps live in modules of their own; this loads the fixtures."""

pytest_plugins = ["tests.fixtures"]
