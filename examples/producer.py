"""Simulated devices publishing temperature readings to ``sensors/<device>/telemetry``.

Each reading is a JSON object ``{"device": "pump-1", "temperature": 21.3, "ts": <ms>}``,
published with QoS 1 (so, with examples/headwater.yaml, it is in stream ``telemetry`` once the
PUBACK arrives)::

    python examples/producer.py                        # 3 devices, one reading each per second
    python examples/producer.py --devices 5 --count 10 --interval 0.2

``ts`` is the time of the reading, in milliseconds since the epoch: the current time by default.
``--start-ts MS --step-ms MS`` stamp simulated times instead (reading ``i`` of every device gets
``start + i * step``), e.g. to produce a few minutes of readings at once for the aggregator.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from itertools import count as counter

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from headwater.clients.connection import InvalidURLError, resolve_url

DEFAULT_URL = "mqtt://127.0.0.1:1883"
PUBLISH_TIMEOUT = 10.0


def say(line: str) -> None:
    """One progress line on stdout, flushed (the output is this script's interface)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("HEADWATER_URL", DEFAULT_URL),
        help="broker URL, mqtt:// or mqtts:// (default: $HEADWATER_URL, else %(default)s)",
    )
    parser.add_argument("--devices", type=int, default=3, help="simulated devices (default: 3)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between rounds of readings (default: 1)"
    )
    parser.add_argument("--count", type=int, default=None, help="readings per device (default: forever)")
    parser.add_argument(
        "--start-ts", type=int, default=None, help="simulated ms timestamp of the first readings"
    )
    parser.add_argument(
        "--step-ms", type=int, default=None, help="ms between simulated timestamps (default: --interval)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable readings")
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if args.count is not None and args.count < 0:
        parser.error("--count must not be negative")
    if args.interval < 0:
        parser.error("--interval must not be negative")
    return args


def connect(url: str) -> mqtt.Client:
    """A connected paho client with its network thread running."""
    settings = resolve_url(url)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"producer-{os.getpid()}",
        protocol=mqtt.MQTTv311,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set()
    connected = threading.Event()
    failure: list[str] = []

    def on_connect(
        _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _properties: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            failure.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    client.connect(settings.host, settings.port, keepalive=30)
    client.loop_start()
    if not connected.wait(PUBLISH_TIMEOUT) or failure:
        client.loop_stop()
        reason = failure[0] if failure else "no CONNACK"
        msg = f"cannot connect to {settings.display_url}: {reason}"
        raise ConnectionError(msg)
    return client


def run(args: argparse.Namespace) -> int:
    """Publish readings until ``--count`` rounds are done (or forever)."""
    client = connect(args.url)
    rng = random.Random(args.seed)  # noqa: S311 - simulated readings, not cryptography
    devices = [f"pump-{index}" for index in range(1, args.devices + 1)]
    base = {device: 18.0 + 1.5 * index for index, device in enumerate(devices)}
    step_ms = args.step_ms if args.step_ms is not None else round(args.interval * 1000)
    published = 0
    try:
        rounds = range(args.count) if args.count is not None else counter()
        for round_ in rounds:
            ts = args.start_ts + round_ * step_ms if args.start_ts is not None else int(time.time() * 1000)
            for device in devices:
                reading = {
                    "device": device,
                    "temperature": round(base[device] + rng.uniform(-1, 1), 1),
                    "ts": ts,
                }
                info = client.publish(f"sensors/{device}/telemetry", json.dumps(reading), qos=1)
                info.wait_for_publish(PUBLISH_TIMEOUT)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not info.is_published():
                    say(f"publish failed for {device}: {mqtt.error_string(info.rc)}")
                    return 1
                published += 1
                say(f"sensors/{device}/telemetry {json.dumps(reading)}")
            if args.interval > 0 and (args.count is None or round_ + 1 < args.count):
                time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    say(f"published {published} reading(s) from {len(devices)} device(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 2 for a bad URL or no broker."""
    args = parse_args(argv)
    try:
        return run(args)
    except (InvalidURLError, ConnectionError, OSError) as exc:
        sys.stderr.write(f"producer: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
