#!/opt/headwater/bin/python3
"""The image's HEALTHCHECK: one round trip over the stream API (list the streams).

Healthy means: the listener accepts the connection, the login is accepted, the reply topic can
be subscribed, and the streams plugin answers a request, within 5 s each. Exit status 0 when
healthy, 1 otherwise (the only two codes Docker defines); the one line printed lands in
``docker inspect``'s ``State.Health.Log``. It must never print a password.

Where it connects, first found: ``$HEADWATER_HEALTHCHECK_URL``; the URL the entrypoint wrote to
``/run/headwater/healthcheck.json`` (a loopback listener open to anonymous clients, see
docker/entrypoint.py; no credentials); ``mqtt://127.0.0.1:1884`` (the image's ``health``
listener) as an anonymous client.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from headwater.clients import ConnectionSettings, InvalidURLError, StreamClient, StreamClientError

HEALTHCHECK_STATE = Path("/run/headwater/healthcheck.json")
ENV_HEALTHCHECK_URL = "HEADWATER_HEALTHCHECK_URL"
FALLBACK_URL = "mqtt://127.0.0.1:1884"
TIMEOUT_SECONDS = 5.0


def read_state() -> dict[str, str]:
    """The entrypoint's ``{"url", "topic_prefix"}``, or ``{}`` when there is none."""
    try:
        state = json.loads(HEALTHCHECK_STATE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in state.items() if isinstance(value, str)}


def main() -> int:
    """Ask the broker for its streams; print one line; 0 when it answered."""
    state = read_state()
    url = os.environ.get(ENV_HEALTHCHECK_URL) or state.get("url") or FALLBACK_URL
    prefix = state.get("topic_prefix", "headwater")
    try:
        with StreamClient.connect(
            url,
            client_id=f"headwater-healthcheck-{secrets.token_hex(4)}",
            topic_prefix=prefix,
            timeout=TIMEOUT_SECONDS,
        ) as client:
            streams = client.list()
    except (StreamClientError, InvalidURLError) as exc:
        print(f"unhealthy: {exc}")  # noqa: T201 - Docker keeps it in State.Health.Log
        return 1
    names = ", ".join(stream.name for stream in streams) or "none"
    print(f"healthy: {ConnectionSettings.from_url(url).display_url} answered, streams: {names}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
