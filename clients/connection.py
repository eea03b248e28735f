"""Where a client connects: ``mqtt://[user[:password]@]host[:port]`` (or ``mqtts://``).

Owns URL parsing and the shared way every client (library and CLI) finds the broker: an explicit
URL, else the environment variable ``HEADWATER_URL``, else ``mqtt://127.0.0.1:1883``.
It must never print or log a password.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULT_URL", "ENV_URL", "ConnectionSettings", "InvalidURLError", "resolve_url"]

DEFAULT_URL = "mqtt://127.0.0.1:1883"
ENV_URL = "HEADWATER_URL"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class InvalidURLError(ValueError):
    """The broker URL can't be used; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSettings:
    """Host, port, TLS and credentials of a broker, parsed from a URL."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> ConnectionSettings:
        """Parse ``url``; raise :class:`InvalidURLError` naming what is wrong (never the password)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            msg = f"unsupported URL scheme {parts.scheme!r} in {redact(url)!r} (use mqtt:// or mqtts://)"
            raise InvalidURLError(msg)
        if not parts.hostname:
            msg = f"no host in {redact(url)!r}"
            raise InvalidURLError(msg)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            msg = f"unexpected path or query in {redact(url)!r}"
            raise InvalidURLError(msg)
        try:
            port = parts.port or _DEFAULT_PORTS[scheme]
        except ValueError as exc:
            msg = f"bad port in {redact(url)!r}"
            raise InvalidURLError(msg) from exc
        return cls(
            host=parts.hostname,
            port=port,
            tls=scheme == "mqtts",
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )

    @property
    def display_url(self) -> str:
        """The URL without its password, for messages."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def resolve_url(explicit: str | None = None) -> ConnectionSettings:
    """The connection settings from ``explicit``, else ``$HEADWATER_URL``, else the default."""
    return ConnectionSettings.from_url(explicit or os.environ.get(ENV_URL) or DEFAULT_URL)
