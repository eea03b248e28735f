"""The broker when its retained store cannot write: a real full disk, real clients.

With the disk full, RocksDB refuses every write until the database is reopened (nothing here
reopens it: no streams plugin runs its recovery). Whatever fails, a client must either get its
acknowledgement for a stored message or see its connection closed, and nobody else's
connection may suffer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.fixtures.disk import small_disk_free
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub


def _fill_disk_until_writes_fail(broker: InProcessBroker, disk: Path) -> None:
    (disk / "ballast").write_bytes(b"\0" * (small_disk_free(disk) - 16 * 1024))
    # Retained publishes of 100 KiB each: the first that does not fit leaves RocksDB refusing
    # every write. mosquitto_pub may or may not get its PUBACK; what matters is the state.
    database = broker.app.host.storage  # type: ignore[union-attr]
    for index in range(20):
        mosquitto_pub(
            broker.port, f"fill/{index}", b"x" * 100_000, qos=1, retain=True, check=False, timeout=10
        )
        if broker.call(_write_error(database)) is not None:
            return
    msg = "the disk did not fill up"
    raise AssertionError(msg)


async def _write_error(database: object) -> str | None:
    return database.write_error  # type: ignore[attr-defined,no-any-return]


def test_a_retained_publish_that_cannot_be_stored_closes_the_connection(
    small_disk: Path, headwater_factory: BrokerFactory
) -> None:
    broker = headwater_factory({"data_dir": str(small_disk / "data")})
    _fill_disk_until_writes_fail(broker, small_disk)

    # The retained store's write raises while the message is offered (before any await):
    # the publisher must get no PUBACK and see its connection closed, so that it resends.
    acked: list[int] = []
    disconnected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retainer", protocol=mqtt.MQTTv311)
    client.on_publish = lambda _c, _u, mid, _rc, _p: acked.append(mid)
    client.on_disconnect = lambda *_args: disconnected.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        info = client.publish("config/site", b"not storable now", qos=1, retain=True)
        assert disconnected.wait(10), "the connection stayed open without a PUBACK"
        assert info.mid not in acked
    finally:
        client.disconnect()
        client.loop_stop()
    assert broker.app.gate.statistics().durable_failures >= 1
    # Other clients are served as before (non-retained messages need no write here).
    with MosquittoSub(broker.port, "live/#") as sub:
        mosquitto_pub(broker.port, "live/a", "still routed", qos=1)
        assert sub.wait_for(1)[0].text == "still routed"


def test_a_retained_write_failure_while_routing_is_logged_not_fatal(
    small_disk: Path, headwater_factory: BrokerFactory
) -> None:
    broker = headwater_factory({"data_dir": str(small_disk / "data")})
    _fill_disk_until_writes_fail(broker, small_disk)
    host = broker.app.host
    assert host is not None
    with MosquittoSub(broker.port, "headwater/test/status") as sub:
        # What the message loop and Headwater's own status publishes call: it must not raise.
        broker.call(host.publish("headwater/test/status", b"{}", qos=0, retain=True))
        assert sub.wait_for(1)[0].text == "{}"
    assert broker.app.broker.retained_write_failures >= 1
    assert "headwater/test/status" in broker.app.broker.retained_messages
