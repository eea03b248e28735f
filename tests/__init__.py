"""Headwater's tests: unit, integration and end-to-end (see tests/conftest.py)."""
