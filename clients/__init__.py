"""Headwater's Python client library (paho-mqtt based), used by devices, operators and the CLI."""

from headwater.clients.connection import (
    DEFAULT_URL,
    ENV_URL,
    ConnectionSettings,
    InvalidURLError,
    resolve_url,
)

__all__ = ["DEFAULT_URL", "ENV_URL", "ConnectionSettings", "InvalidURLError", "resolve_url"]
