"""Stream API rights per operation, end to end: the attacks of a user who may *send* requests.

A real broker with the streams plugin and the API, a password file and an ACL; requests from
StreamClient and from mosquitto_pub/mosquitto_sub. Each attack is refused with ``forbidden`` and
leaves the stream as it was; the same requests from a stream admin go through.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from headwater.broker.passwords import set_password
from headwater.clients import (
    ForbiddenError,
    InvalidStreamRequestError,
    StreamClient,
    StreamNotFoundError,
)
from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin
from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub

S3_EXPORT = {"id": "out", "type": "s3", "bucket": "someone-elses-bucket"}
RECORDS = 20
PAYLOAD = "x" * 200  # RECORDS of these are more than 1KiB: a 1KiB max_size would drop most
API = ["headwater/streams/#", "headwater/replies/%u/#"]

ACL: dict[str, Any] = {
    # Everything, dead-letter included (spelled out: "*" does not reach it).
    "admin": {
        "publish": [*API, "sensors/#"],
        "subscribe": [*API, "sensors/#"],
        "streams": {"read": ["*", "dead-letter"], "append": ["*", "dead-letter"], "admin": ["*"]},
    },
    # May publish every request topic (update, delete, create, export included) and, by its
    # topic rules, read every stream: but administers none.
    "updater": {"publish": API, "subscribe": [*API, "sensors/#"]},
    # Reads every stream but dead-letter; appends to and administers only its tmp-* streams.
    "reader": {
        "publish": API,
        "subscribe": [*API, "sensors/#"],
        "streams": {"read": ["*"], "append": ["tmp-*"], "admin": ["tmp-*"]},
    },
}
STREAMS = """
streams:
  telemetry:
    topics: ["sensors/+/telemetry"]
  dead-letter:
    topics: []
"""


def _url(broker: InProcessBroker, user: str) -> str:
    return f"mqtt://{user}:{user}-secret@127.0.0.1:{broker.port}"


@pytest.fixture
def hub(headwater_factory: BrokerFactory, tmp_path: Path) -> InProcessBroker:
    passwords = tmp_path / "passwd"
    for user in ACL:
        set_password(passwords, user, f"{user}-secret")
    streams = StreamsPlugin()
    broker = headwater_factory(
        {
            "broker": {"allow_anonymous": False, "password_file": str(passwords), "acl": ACL},
            **yaml.safe_load(STREAMS),
        },
        plugins=[streams, StreamsApi(streams)],
    )
    with StreamClient.connect(_url(broker, "admin")) as admin:
        admin.create("runtime", {"topics": ["sensors/#"], "max_size": "1MiB"})
        for _ in range(RECORDS):
            admin.append("runtime", PAYLOAD)
        admin.append("dead-letter", '{"stream": "telemetry", "payload": "a secret reading"}')
    return broker


def _assert_runtime_unchanged(broker: InProcessBroker) -> None:
    """The stream still has its records, no export, and room for them (max_size not shrunk)."""
    with StreamClient.connect(_url(broker, "admin")) as admin:
        # One more append applies retention: with max_size shrunk to 1KiB, old records would go.
        admin.append("runtime", PAYLOAD)
        description = admin.describe("runtime")
        assert description.exports == ()
        assert description.storage.record_count == RECORDS + 1
        assert len(admin.read("runtime", max_count=1000)) == RECORDS + 1


def _mosquitto_request(
    broker: InProcessBroker, user: str, topic: str, body: dict[str, Any]
) -> dict[str, Any]:
    """One request/response exchange with mosquitto_pub/mosquitto_sub, logged in as ``user``."""
    login = {"username": user, "password": f"{user}-secret"}
    reply_to = f"headwater/replies/{user}/{uuid.uuid4().hex[:10]}"
    with MosquittoSub(broker.port, reply_to, qos=1, **login) as replies:
        mosquitto_pub(broker.port, topic, json.dumps({**body, "reply_to": reply_to}), qos=1, **login)
        message = replies.wait_for(1)[0]
    response: dict[str, Any] = json.loads(message.payload)
    return response


# --- the attacks --------------------------------------------------------------------------------


def test_update_without_admin_cannot_add_an_export(hub: InProcessBroker) -> None:
    response = _mosquitto_request(
        hub,
        "updater",
        "headwater/streams/runtime/update",
        {"config": {"topics": ["sensors/#"], "max_size": "1MiB", "exports": [S3_EXPORT]}},
    )
    assert response["ok"] is False
    assert response["error"] == {
        "type": "forbidden",
        "message": "user 'updater' may not administer stream 'runtime' (not in its streams.admin)",
    }
    _assert_runtime_unchanged(hub)


def test_update_without_admin_cannot_shrink_the_stream(hub: InProcessBroker) -> None:
    with (
        StreamClient.connect(_url(hub, "updater")) as updater,
        pytest.raises(ForbiddenError, match="may not administer stream 'runtime'"),
    ):
        updater.update("runtime", {"topics": ["sensors/#"], "max_size": "1KiB", "ttl": "1s"})
    _assert_runtime_unchanged(hub)


def test_delete_without_admin_is_forbidden_and_the_data_stays(hub: InProcessBroker) -> None:
    for user in ("updater", "reader"):
        with (
            StreamClient.connect(_url(hub, user)) as client,
            pytest.raises(ForbiddenError, match="may not administer stream 'runtime'"),
        ):
            client.delete("runtime")
    _assert_runtime_unchanged(hub)


def test_pausing_an_export_needs_admin(hub: InProcessBroker) -> None:
    with (
        StreamClient.connect(_url(hub, "updater")) as updater,
        pytest.raises(ForbiddenError, match="may not administer stream 'runtime'"),
    ):
        updater.pause_export("runtime", "out")
    # The admin gets past the rights (this hub runs no upload plugin, so nothing to pause).
    with (
        StreamClient.connect(_url(hub, "admin")) as admin,
        pytest.raises(InvalidStreamRequestError, match="exports are not running"),
    ):
        admin.pause_export("runtime", "out")


def test_create_with_an_export_needs_admin(hub: InProcessBroker) -> None:
    for user in ("updater", "reader"):
        with (
            StreamClient.connect(_url(hub, user)) as client,
            pytest.raises(ForbiddenError, match="may not administer stream 'sneaky'"),
        ):
            client.create("sneaky", {"topics": ["sensors/#"], "exports": [S3_EXPORT]})
    with StreamClient.connect(_url(hub, "admin")) as admin, pytest.raises(StreamNotFoundError):
        admin.describe("sneaky")


def test_read_star_does_not_reach_dead_letter(hub: InProcessBroker) -> None:
    for user in ("reader", "updater"):  # read: ["*"], and subscribe rights on headwater/streams/#
        with StreamClient.connect(_url(hub, user)) as client:
            assert client.read("runtime", max_count=1)  # reading in general works
            with pytest.raises(ForbiddenError, match="may not read stream 'dead-letter'"):
                client.read("dead-letter")
            with pytest.raises(ForbiddenError, match="may not describe stream 'dead-letter'"):
                client.describe("dead-letter")
            assert "dead-letter" not in [d.name for d in client.list()]
        with (
            StreamClient.connect(_url(hub, user)) as client,
            pytest.raises(ForbiddenError, match="may not append to stream 'dead-letter'"),
        ):
            client.append("dead-letter", "forged")
    # Nor can a tmp-* admin take the name over.
    with (
        StreamClient.connect(_url(hub, "reader")) as reader,
        pytest.raises(ForbiddenError, match="may not administer stream 'dead-letter'"),
    ):
        reader.update("dead-letter", {"exports": [S3_EXPORT]})


# --- what admins (of their streams) may still do -------------------------------------------------


def test_an_admin_can_still_do_all_of_it(hub: InProcessBroker) -> None:
    with StreamClient.connect(_url(hub, "admin")) as admin:
        created = admin.create("archive", {"topics": ["sensors/#"], "exports": [S3_EXPORT]})
        assert [export.id for export in created.exports] == ["out"]
        updated = admin.update(
            "runtime", {"topics": ["sensors/#"], "max_size": "1KiB", "exports": [S3_EXPORT]}
        )
        assert [export.id for export in updated.exports] == ["out"]
        admin.append("runtime", PAYLOAD)  # retention at 1KiB: most records go
        assert admin.describe("runtime").storage.record_count < RECORDS
        assert [r.payload for r in admin.read("dead-letter")] == [
            b'{"stream": "telemetry", "payload": "a secret reading"}'
        ]
        admin.delete("runtime")
        admin.delete("archive")
        with pytest.raises(StreamNotFoundError):
            admin.describe("runtime")


def test_a_user_administers_its_own_streams(hub: InProcessBroker) -> None:
    with StreamClient.connect(_url(hub, "reader")) as reader:
        reader.create("tmp-1", {"topics": ["sensors/#"], "exports": [S3_EXPORT]})
        assert reader.append("tmp-1", "mine") == 0
        reader.update("tmp-1", {"topics": ["sensors/#"], "max_size": "64KiB"})
        with pytest.raises(ForbiddenError, match="may not append to stream 'runtime'"):
            reader.append("runtime", "not mine")
        reader.delete("tmp-1")
