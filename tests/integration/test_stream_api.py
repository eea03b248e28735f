"""The stream API end to end: a real broker with the streams plugin and the API.

Driven by mosquitto_pub/sub (exactly as docs/stream-api.md shows) and by StreamClient.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from headwater.broker.passwords import set_password
from headwater.clients import (
    ForbiddenError,
    InvalidStreamRequestError,
    RequestTimeoutError,
    StreamClient,
    StreamExistsError,
    StreamNotFoundError,
    StreamRecord,
)
from headwater.plugins.streams.api import StreamsApi, StreamsApiLimits, StreamsApiStatistics
from headwater.plugins.streams.plugin import StreamsPlugin
from tests.fixtures.broker import BrokerFactory, HeadwaterProcess, InProcessBroker
from tests.fixtures.mosquitto import MosquittoSub, MqttMessage, free_port, mosquitto_pub

STREAMS = """
streams:
  telemetry:
    topics: ["sensors/+/telemetry"]
  audit:
    topics: ["audit/#"]
    persistence: memory
"""
QUIET = 1.5  # seconds we listen to make sure nothing arrives


@dataclass
class ApiBroker:
    """A Headwater with the streams plugin and the stream API in front of it."""

    broker: InProcessBroker
    api: StreamsApi

    @property
    def port(self) -> int:
        return self.broker.port

    def url(self, user: str | None = None) -> str:
        credentials = f"{user}:{user}-secret@" if user else ""
        return f"mqtt://{credentials}127.0.0.1:{self.port}"

    def statistics(self) -> StreamsApiStatistics:
        async def snapshot() -> StreamsApiStatistics:
            return self.api.statistics()

        return self.broker.call(snapshot())


def start(
    factory: BrokerFactory, body: str = STREAMS, *, limits: StreamsApiLimits | None = None
) -> ApiBroker:
    streams = StreamsPlugin()
    api = StreamsApi(streams, limits=limits)
    return ApiBroker(factory(body, plugins=[streams, api]), api)


@pytest.fixture
def hub(headwater_factory: BrokerFactory) -> ApiBroker:
    return start(headwater_factory)


def _reply_topic() -> str:
    return f"test/replies/{uuid.uuid4().hex[:10]}"


def mosquitto_request(
    port: int, topic: str, body: dict[str, Any] | None = None, *, reply_to: str | None = None, **login: str
) -> dict[str, Any]:
    """One request/response exchange with nothing but mosquitto_pub and mosquitto_sub."""
    reply_to = reply_to or _reply_topic()
    with MosquittoSub(port, reply_to, qos=1, **login) as replies:
        mosquitto_pub(port, topic, json.dumps({**(body or {}), "reply_to": reply_to}), qos=1, **login)
        message = replies.wait_for(1)[0]
    response: dict[str, Any] = json.loads(message.payload)
    return response


def _is_response(message: MqttMessage) -> bool:
    """Whether ``message`` is a stream API response (not a request, not a status)."""
    try:
        data = json.loads(message.payload)
    except ValueError:
        return False
    return isinstance(data, dict) and "ok" in data and "request_id" in data


# --- mosquitto: the documented exchange ----------------------------------------------------------------


def test_mosquitto_clients_drive_every_read_operation(hub: ApiBroker) -> None:
    mosquitto_pub(hub.port, "sensors/d1/telemetry", '{"t": 21.5}', qos=1)
    mosquitto_pub(hub.port, "sensors/d2/telemetry", bytes([0, 255, 1]), qos=1)

    listed = mosquitto_request(hub.port, "headwater/streams/_list", {"request_id": "l1"})
    assert listed["request_id"] == "l1"
    assert listed["ok"] is True
    assert [stream["name"] for stream in listed["result"]["streams"]] == ["audit", "telemetry"]

    read = mosquitto_request(hub.port, "headwater/streams/telemetry/read", {"request_id": 7, "max": 10})
    assert read["request_id"] == 7
    records = read["result"]["records"]
    assert read["result"]["next_sequence"] == 2
    assert [(r["sequence"], r["topic"]) for r in records] == [
        (0, "sensors/d1/telemetry"),
        (1, "sensors/d2/telemetry"),
    ]
    assert records[0]["payload"] == '{"t": 21.5}'
    assert records[1]["payload_b64"] == "AP8B"
    assert "payload" not in records[1]
    assert set(records[0]) == {"sequence", "timestamp", "topic", "qos", "client_id", "payload"}
    assert abs(records[0]["timestamp"] - time.time() * 1000) < 60_000

    described = mosquitto_request(hub.port, "headwater/streams/telemetry/describe")
    assert described["request_id"] is None
    assert described["result"]["name"] == "telemetry"
    assert described["result"]["storage"]["record_count"] == 2
    assert described["result"]["storage"]["newest_sequence"] == 1
    assert described["result"]["exports"] == []

    second = mosquitto_request(hub.port, "headwater/streams/telemetry/read", {"from": 1})
    assert [r["sequence"] for r in second["result"]["records"]] == [1]


def test_mosquitto_clients_append_create_and_delete(hub: ApiBroker) -> None:
    appended = mosquitto_request(
        hub.port, "headwater/streams/telemetry/append", {"payload": "hello", "request_id": "a1"}
    )
    assert appended == {"request_id": "a1", "ok": True, "result": {"sequence": 0}}
    binary = mosquitto_request(
        hub.port,
        "headwater/streams/telemetry/append",
        {"payload_b64": "/wE=", "topic": "sensors/x/telemetry"},
    )
    assert binary["result"] == {"sequence": 1}
    read = mosquitto_request(hub.port, "headwater/streams/telemetry/read")
    records = read["result"]["records"]
    assert [r.get("payload", r.get("payload_b64")) for r in records] == ["hello", "/wE="]
    assert [r["topic"] for r in records] == ["headwater/streams/telemetry/append", "sensors/x/telemetry"]
    assert {r["qos"] for r in records} == {1}

    created = mosquitto_request(
        hub.port, "headwater/streams/alerts/create", {"config": {"topics": ["alerts/#"], "max_size": "1MiB"}}
    )
    assert created["ok"] is True
    assert created["result"]["name"] == "alerts"
    assert created["result"]["storage"]["record_count"] == 0
    mosquitto_pub(hub.port, "alerts/fire", "!", qos=1)
    alerts = mosquitto_request(hub.port, "headwater/streams/alerts/read")
    assert [r["payload"] for r in alerts["result"]["records"]] == ["!"]
    deleted = mosquitto_request(hub.port, "headwater/streams/alerts/delete")
    assert deleted["result"] == {"name": "alerts"}
    gone = mosquitto_request(hub.port, "headwater/streams/alerts/describe")
    assert gone["ok"] is False
    assert gone["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    ("topic", "body", "error_type", "message"),
    [
        ("headwater/streams/nope/read", {}, "not_found", "nope"),
        ("headwater/streams/telemetry/raed", {}, "invalid", "unknown operation 'raed'"),
        ("headwater/streams/telemetry/read", {"max": 0}, "invalid", "max: must be between 1 and 10000"),
        ("headwater/streams/telemetry/read", {"timeout": 61}, "invalid", "timeout: must be between 0 and 60"),
        ("headwater/streams/telemetry/append", {}, "invalid", "exactly one of payload"),
        ("headwater/streams/telemetry/create", {"config": {}}, "exists", "telemetry"),
        (
            "headwater/streams/new/create",
            {"config": {"max_size": "1B"}},
            "invalid",
            "streams.new.max_size: must be at least 1KiB",
        ),
        ("headwater/streams/telemetry/delete", {}, "invalid", "config"),
    ],
)
def test_errors_name_the_problem(
    hub: ApiBroker, topic: str, body: dict[str, Any], error_type: str, message: str
) -> None:
    response = mosquitto_request(hub.port, topic, {**body, "request_id": "e"})
    assert response["request_id"] == "e"
    assert response["ok"] is False
    assert response["error"]["type"] == error_type
    assert message in response["error"]["message"]


def test_long_poll_answers_when_records_arrive_without_delaying_the_puback(hub: ApiBroker) -> None:
    reply_to = _reply_topic()
    with MosquittoSub(hub.port, reply_to, qos=1) as replies:
        request = {"reply_to": reply_to, "from": 0, "timeout": 20, "min": 2}
        started = time.monotonic()
        # mosquitto_pub -q 1 returns after its PUBACK: the long poll must not hold it back.
        mosquitto_pub(hub.port, "headwater/streams/telemetry/read", json.dumps(request), qos=1)
        assert time.monotonic() - started < 5
        mosquitto_pub(hub.port, "sensors/a/telemetry", "one", qos=1)
        with pytest.raises(TimeoutError):
            replies.wait_for(1, timeout=QUIET)  # min is 2
        mosquitto_pub(hub.port, "sensors/a/telemetry", "two", qos=1)
        response = json.loads(replies.wait_for(1, timeout=10)[0].payload)
    assert time.monotonic() - started < 15
    assert [r["payload"] for r in response["result"]["records"]] == ["one", "two"]
    assert response["result"]["next_sequence"] == 2


def test_long_poll_times_out_with_what_there_is(hub: ApiBroker) -> None:
    started = time.monotonic()
    response = mosquitto_request(hub.port, "headwater/streams/telemetry/read", {"from": 5, "timeout": 1})
    assert 0.9 < time.monotonic() - started < 10
    assert response["result"] == {"records": [], "next_sequence": 5}


def test_appends_of_one_client_are_stored_in_publish_order(hub: ApiBroker) -> None:
    reply_to = _reply_topic()
    count = 200
    lines = [json.dumps({"reply_to": reply_to, "request_id": i, "payload": f"m{i}"}) for i in range(count)]
    with MosquittoSub(hub.port, reply_to, qos=1) as replies:
        mosquitto_pub(hub.port, "headwater/streams/telemetry/append", lines=lines, qos=1)
        responses = [json.loads(m.payload) for m in replies.wait_for(count, timeout=30)]
    sequences = {r["request_id"]: r["result"]["sequence"] for r in responses}
    assert sequences == {i: i for i in range(count)}
    with StreamClient.connect(hub.url()) as client:
        records = list(client.iter_records("telemetry"))
    assert [r.payload.decode() for r in records] == [f"m{i}" for i in range(count)]


def test_unanswerable_requests_are_counted_not_executed(hub: ApiBroker) -> None:
    with MosquittoSub(hub.port, "#") as everything:
        mosquitto_pub(hub.port, "headwater/streams/telemetry/append", "not json", qos=1)
        mosquitto_pub(hub.port, "headwater/streams/telemetry/append", '{"payload": "no reply_to"}', qos=1)
        mosquitto_pub(
            hub.port,
            "headwater/streams/telemetry/append",
            '{"payload": "x", "reply_to": "headwater/streams/telemetry/status"}',
            qos=1,
        )
        with pytest.raises(TimeoutError):
            everything.wait_for(predicate=lambda ms: any(_is_response(m) for m in ms), timeout=QUIET)
    statistics = hub.statistics()
    assert statistics.unanswerable == 3
    assert statistics.answered_ok == statistics.answered_error == 0
    with StreamClient.connect(hub.url()) as client:
        assert client.read("telemetry") == []


def test_a_full_api_drops_requests_and_counts_them(headwater_factory: BrokerFactory) -> None:
    hub = start(headwater_factory, limits=StreamsApiLimits(max_pending=1))
    reply_to = _reply_topic()
    with MosquittoSub(hub.port, reply_to, qos=1) as replies:
        hold = {"reply_to": reply_to, "request_id": "poll", "from": 0, "timeout": 3}
        mosquitto_pub(hub.port, "headwater/streams/telemetry/read", json.dumps(hold), qos=1)
        mosquitto_pub(
            hub.port, "headwater/streams/telemetry/describe", json.dumps({"reply_to": reply_to}), qos=1
        )
        answers = [json.loads(m.payload) for m in replies.wait_for(1, timeout=10)]
    assert [a["request_id"] for a in answers] == ["poll"]
    assert hub.statistics().dropped_busy == 1


def test_stopping_cancels_long_polls(headwater_factory: BrokerFactory) -> None:
    hub = start(headwater_factory)
    reply_to = _reply_topic()
    with MosquittoSub(hub.port, reply_to, qos=1):
        for _ in range(3):
            poll = {"reply_to": reply_to, "from": 0, "timeout": 60}
            mosquitto_pub(hub.port, "headwater/streams/telemetry/read", json.dumps(poll), qos=1)
        deadline = time.monotonic() + 10
        while hub.statistics().pending < 3:
            assert time.monotonic() < deadline, hub.statistics()
            time.sleep(0.05)
    started = time.monotonic()
    assert hub.broker.stop() == []
    assert time.monotonic() - started < 10


# --- StreamClient --------------------------------------------------------------------------------------


def test_stream_client_operations(hub: ApiBroker) -> None:
    with StreamClient.connect(hub.url()) as client:
        assert [d.name for d in client.list()] == ["audit", "telemetry"]
        assert client.append("telemetry", "text") == 0
        assert client.append("telemetry", b"\x00\xffbinary", topic="sensors/z/telemetry") == 1
        records = client.read("telemetry")
        assert [(r.sequence, r.payload, r.topic) for r in records] == [
            (0, b"text", "headwater/streams/telemetry/append"),
            (1, b"\x00\xffbinary", "sensors/z/telemetry"),
        ]
        assert {r.client_id for r in records} == {client.client_id}
        assert client.read("telemetry", from_sequence=1) == records[1:]
        assert client.read("telemetry", max_count=1) == records[:1]
        assert client.read("telemetry", max_bytes=1) == records[:1]  # always one record

        description = client.describe("telemetry")
        assert description.name == "telemetry"
        assert description.persistence == "file"
        assert description.storage.record_count == 2
        assert (description.storage.oldest_sequence, description.storage.newest_sequence) == (0, 1)

        created = client.create("runtime", {"topics": ["runtime/#"], "max_size": "64KiB"})
        assert created.storage.record_count == 0
        with pytest.raises(StreamExistsError):
            client.create("runtime", {})
        updated = client.update("runtime", {"topics": ["runtime/#", "more/#"], "max_size": "128KiB"})
        assert updated.name == "runtime"
        mosquitto_pub(hub.port, "more/x", "via update", qos=1)
        assert [r.payload for r in client.read("runtime")] == [b"via update"]
        with pytest.raises(InvalidStreamRequestError, match="persistence"):
            client.update("runtime", {"persistence": "memory"})
        client.delete("runtime")
        with pytest.raises(StreamNotFoundError, match="runtime"):
            client.describe("runtime")
        with pytest.raises(InvalidStreamRequestError, match="max: must be between"):
            client.read("telemetry", max_count=0)


def test_iter_records_pages_through_a_stream(hub: ApiBroker) -> None:
    mosquitto_pub(hub.port, "sensors/a/telemetry", lines=[f"r{i}" for i in range(2500)], qos=1)
    with StreamClient.connect(hub.url()) as client:
        records = list(client.iter_records("telemetry"))
        assert [r.sequence for r in records] == list(range(2500))
        tail = list(client.iter_records("telemetry", from_sequence=2490, page_size=3))
        assert [r.payload for r in tail] == [f"r{i}".encode() for i in range(2490, 2500)]


def test_iter_records_follows_new_records(hub: ApiBroker) -> None:
    received: list[StreamRecord] = []
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            with StreamClient.connect(hub.url()) as client:
                for record in client.iter_records("telemetry", follow=True):
                    received.append(record)
                    if len(received) == 3:
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failures.append(exc)

    mosquitto_pub(hub.port, "sensors/a/telemetry", "before", qos=1)
    follower = threading.Thread(target=follow, name="follower", daemon=True)
    follower.start()
    time.sleep(0.5)
    mosquitto_pub(hub.port, "sensors/a/telemetry", "during 1", qos=1)
    time.sleep(0.3)
    mosquitto_pub(hub.port, "sensors/b/telemetry", "during 2", qos=0)
    follower.join(20)
    assert not follower.is_alive()
    assert failures == []
    assert [r.payload for r in received] == [b"before", b"during 1", b"during 2"]
    assert [r.sequence for r in received] == [0, 1, 2]


def test_following_survives_a_crash_and_restart(
    headwater_process: Callable[..., HeadwaterProcess], tmp_path: Path
) -> None:
    # `headwater run` (the built-in plugins, API included) killed -9 and started again on the
    # same port and data directory, the way a watchdog restarts it.
    body = yaml.safe_load(STREAMS)
    body["broker"] = {"listeners": {"default": {"bind": f"127.0.0.1:{free_port()}"}}}
    body["data_dir"] = str(tmp_path / "data")
    process = headwater_process(body)
    received: list[StreamRecord] = []
    failures: list[BaseException] = []
    arrived = threading.Condition()

    def follow() -> None:
        try:
            with StreamClient.connect(f"mqtt://127.0.0.1:{process.port}", timeout=2) as client:
                for record in client.iter_records("telemetry", follow=True):
                    with arrived:
                        received.append(record)
                        arrived.notify_all()
                    if len(received) == 2:
                        return
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failures.append(exc)

    # daemon: a failing test must not leave the interpreter waiting for a follower forever
    follower = threading.Thread(target=follow, name="follower", daemon=True)
    follower.start()
    mosquitto_pub(process.port, "sensors/a/telemetry", "before the crash", qos=1)
    with arrived:
        assert arrived.wait_for(lambda: len(received) == 1, timeout=10), failures
    process.restart()
    mosquitto_pub(process.port, "sensors/a/telemetry", "after the restart", qos=1)
    follower.join(30)
    assert not follower.is_alive()
    assert failures == []
    assert [(r.sequence, r.payload) for r in received] == [
        (0, b"before the crash"),
        (1, b"after the restart"),
    ]


def test_memory_streams_through_the_api(hub: ApiBroker) -> None:
    with StreamClient.connect(hub.url()) as client:
        assert client.append("audit", "m") == 0
        mosquitto_pub(hub.port, "audit/login", "alice", qos=0)
        deadline = time.monotonic() + 5
        while len(client.read("audit")) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.describe("audit").persistence == "memory"


def test_client_timeout_names_the_likely_causes(headwater_factory: BrokerFactory) -> None:
    broker = headwater_factory()  # no streams plugin, no API
    with (
        StreamClient.connect(f"mqtt://127.0.0.1:{broker.port}", timeout=1) as client,
        pytest.raises(RequestTimeoutError, match="no response to headwater/streams/_list within 1s"),
    ):
        client.list()


# --- ACL ----------------------------------------------------------------------------------------------


@pytest.fixture
def secured(headwater_factory: BrokerFactory, tmp_path: Path) -> ApiBroker:
    passwords = tmp_path / "passwd"
    for user in ("operator", "dashboard", "device", "watcher"):
        set_password(passwords, user, f"{user}-secret")
    acl = {
        "operator": {
            "publish": ["headwater/streams/#", "headwater/replies/%u/#", "sensors/#"],
            "subscribe": ["headwater/streams/#", "headwater/replies/%u/#", "sensors/#"],
        },
        "dashboard": {
            "publish": ["headwater/streams/#", "headwater/replies/%u/#"],
            "subscribe": ["headwater/streams/telemetry/#", "headwater/replies/%u/#", "sensors/#"],
            # read and append keep their defaults (the topic rules); admin only of "spy", so
            # that creating it gets as far as the topic check.
            "streams": {"admin": ["spy"]},
        },
        "device": {"publish": ["sensors/%u/telemetry"], "subscribe": ["commands/%u/#"]},
        "watcher": {"publish": [], "subscribe": ["#"]},
    }
    broker = {"allow_anonymous": False, "password_file": str(passwords), "acl": acl}
    return start(headwater_factory, {"broker": broker, **yaml.safe_load(STREAMS)})


def _login(user: str) -> dict[str, str]:
    return {"username": user, "password": f"{user}-secret"}


def test_reading_needs_subscribe_rights_on_the_stream(secured: ApiBroker) -> None:
    mosquitto_pub(secured.port, "sensors/device/telemetry", "reading", qos=1, **_login("device"))
    with StreamClient.connect(secured.url("dashboard")) as dashboard:
        assert [r.payload for r in dashboard.read("telemetry")] == [b"reading"]
        assert dashboard.describe("telemetry").storage.record_count == 1
        assert [d.name for d in dashboard.list()] == ["telemetry"]  # audit is not its business
        with pytest.raises(
            ForbiddenError, match="user 'dashboard' may not subscribe to headwater/streams/audit/records"
        ):
            dashboard.read("audit")
        with pytest.raises(ForbiddenError, match="headwater/streams/audit/status"):
            dashboard.describe("audit")
        # A stream recording topics the dashboard may not subscribe to, nor write records there.
        with pytest.raises(ForbiddenError, match="may not subscribe to commands/#"):
            dashboard.create("spy", {"topics": ["commands/#"]})
        with pytest.raises(ForbiddenError, match="may not publish to sensors/device/telemetry"):
            dashboard.append("telemetry", "forged", topic="sensors/device/telemetry")
    with StreamClient.connect(secured.url("operator")) as operator:
        assert [d.name for d in operator.list()] == ["audit", "telemetry"]
        assert operator.append("telemetry", "ok", topic="sensors/device/telemetry") == 1


def test_reply_to_must_be_the_requesters_own(secured: ApiBroker) -> None:
    mosquitto_pub(secured.port, "sensors/device/telemetry", "secret reading", qos=1, **_login("device"))
    # The dashboard may receive sensors/# but not publish there: Headwater must not answer there
    # (it would put messages into the devices' topics on the dashboard's behalf).
    with MosquittoSub(secured.port, "#", **_login("watcher")) as watcher:
        for reply_to in ("sensors/device/telemetry", "headwater/replies/operator/x", "commands/device/x"):
            request = {"reply_to": reply_to, "from": 0}
            mosquitto_pub(
                secured.port,
                "headwater/streams/telemetry/read",
                json.dumps(request),
                qos=1,
                **_login("dashboard"),
            )
        with pytest.raises(TimeoutError):
            watcher.wait_for(predicate=lambda ms: any(_is_response(m) for m in ms), timeout=QUIET)
    assert secured.statistics().unanswerable == 3


def test_a_client_that_may_not_subscribe_to_its_reply_topic_is_told_at_connect(secured: ApiBroker) -> None:
    with pytest.raises(ForbiddenError, match="user 'device' may not subscribe to the reply topic"):
        StreamClient.connect(secured.url("device"))


def test_requests_the_broker_refuses_never_reach_the_api(secured: ApiBroker) -> None:
    refused = {"reply_to": "commands/device/x", "payload": "x"}
    mosquitto_pub(
        secured.port, "headwater/streams/telemetry/append", json.dumps(refused), qos=1, **_login("device")
    )
    with StreamClient.connect(secured.url("operator")) as operator:
        assert operator.read("telemetry") == []
    assert secured.statistics().requests == 1  # the operator's read only
