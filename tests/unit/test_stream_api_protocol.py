"""The stream API's protocol and access rules without a broker, and the client's decoding.

Wire shapes: headwater.wire.streams; server side: headwater.plugins.streams.api; client side:
headwater.clients.streams.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.broker.durable import PublishGate
from headwater.clients import streams as client
from headwater.core.access import ANONYMOUS, AccessPolicy
from headwater.core.config import ConfigError, StreamConfig, TopicACL, parse_stream_config
from headwater.plugins.streams.api import (
    AppendRequest,
    CreateRequest,
    DeleteRequest,
    DescribeRequest,
    ExportSwitchRequest,
    ListRequest,
    ReadRequest,
    Request,
    RequestError,
    RequestPermissions,
    UnanswerableRequestError,
    UpdateRequest,
    parse_envelope,
    parse_request,
    parse_target,
)
from headwater.wire.streams import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_COUNT,
    ExportInfo,
    StorageInfo,
    StreamDescription,
    StreamRecord,
    WireFormatError,
    decode_response,
    encode_error,
    encode_result,
    reply_topic,
    request_topic,
)

PREFIX = "headwater"


# --- topics -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "target"),
    [
        ("headwater/streams/_list", (None, "_list")),
        ("headwater/streams/telemetry/read", ("telemetry", "read")),
        ("headwater/streams/a.b-c_d/append", ("a.b-c_d", "append")),
        ("headwater/streams/x/delete", ("x", "delete")),
        ("sensors/a/telemetry", None),
        ("headwater/streamsx/_list", None),
        ("headwater/deploy/app", None),
    ],
)
def test_request_topics(topic: str, target: tuple[str | None, str] | None) -> None:
    assert parse_target(PREFIX, topic) == target


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("headwater/streams/telemetry/raed", "unknown operation 'raed'"),
        ("headwater/streams/telemetry/records", "unknown operation 'records'"),
        ("headwater/streams/telemetry", "is no request topic"),
        ("headwater/streams/_list/x", "is no request topic"),
        ("headwater/streams/_other/read", "is no request topic"),
        ("headwater/streams//read", "is no request topic"),
        ("headwater/streams/a/b/read", "is no request topic"),
    ],
)
def test_topics_under_the_root_that_are_no_request(topic: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as refused:
        parse_target(PREFIX, topic)
    assert refused.value.type == "invalid"


def test_request_topic_is_what_parse_target_reads() -> None:
    assert parse_target("hw/x", request_topic("hw/x", None, "_list")) == (None, "_list")
    assert parse_target("hw/x", request_topic("hw/x", "s", "read")) == ("s", "read")


# --- envelope ---------------------------------------------------------------------------------


def test_envelope_takes_reply_to_and_request_id_out_of_the_body() -> None:
    envelope = parse_envelope(b'{"reply_to": "me/replies", "request_id": "r1", "max": 5}')
    assert envelope.reply_to == "me/replies"
    assert envelope.request_id == "r1"
    assert envelope.body == {"max": 5}
    assert envelope.request_id_error is None
    assert parse_envelope(b'{"reply_to": "r", "request_id": 7}').request_id == 7
    assert parse_envelope(b'{"reply_to": "r"}').request_id is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not JSON"),
        (b"\xff", "not JSON"),
        (b"read please", "not JSON"),
        (b"[1, 2]", "must be a JSON object, got a list"),
        (b'"x"', "must be a JSON object"),
        (b"{}", "no reply_to"),
        (b'{"reply_to": 5}', "no reply_to"),
    ],
)
def test_requests_that_cannot_be_answered(payload: bytes, message: str) -> None:
    with pytest.raises(UnanswerableRequestError, match=message):
        parse_envelope(payload)


@pytest.mark.parametrize("request_id", [True, 1.5, [1], {"a": 1}, "x" * 257])
def test_a_bad_request_id_is_answered_as_invalid_without_it(request_id: object) -> None:
    envelope = parse_envelope(json.dumps({"reply_to": "r", "request_id": request_id}).encode())
    assert envelope.request_id is None
    assert envelope.request_id_error is not None
    assert envelope.request_id_error.startswith("request_id: expected a string")


# --- operations -------------------------------------------------------------------------------


def test_read_defaults() -> None:
    assert parse_request("s", "read", {}) == ReadRequest(
        stream="s",
        from_sequence=0,
        max_count=DEFAULT_MAX_COUNT,
        max_bytes=DEFAULT_MAX_BYTES,
        min_count=1,
        timeout=0.0,
    )


def test_read_with_every_key() -> None:
    body = {"from": 7, "max": 50, "max_bytes": 1000, "min": 10, "timeout": 2.5}
    assert parse_request("s", "read", body) == ReadRequest(
        stream="s", from_sequence=7, max_count=50, max_bytes=1000, min_count=10, timeout=2.5
    )
    assert parse_request("s", "read", {"timeout": 60}).timeout == 60.0
    assert parse_request("s", "read", {"min": 0}).min_count == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"from": -1}, "from: must be between 0 and"),
        ({"from": "oldest"}, 'from: expected an integer, got "oldest"'),
        ({"from": 1.0}, "from: expected an integer"),
        ({"max": 0}, "max: must be between 1 and 10000, got 0"),
        ({"max": 10001}, "max: must be between 1 and 10000"),
        ({"max": True}, "max: expected an integer, got true"),
        ({"max_bytes": 0}, "max_bytes: must be between 1 and 4194304"),
        ({"max_bytes": 4 * 1024 * 1024 + 1}, "max_bytes: must be between"),
        ({"max": 5, "min": 6}, "min: must be between 0 and 5, got 6"),
        ({"timeout": 61}, "timeout: must be between 0 and 60, got 61"),
        ({"timeout": -1}, "timeout: must be between 0 and 60"),
        ({"timeout": "5s"}, "timeout: expected a number of seconds"),
        ({"count": 5}, "count: unknown key \\(expected one of: reply_to, request_id, from, max"),
    ],
)
def test_read_refuses_bad_values_naming_the_key(body: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=message) as refused:
        parse_request("s", "read", body)
    assert refused.value.type == "invalid"


def test_append_text_and_bytes() -> None:
    assert parse_request("s", "append", {"payload": "héllo"}) == AppendRequest("s", "héllo".encode())
    assert parse_request("s", "append", {"payload": ""}) == AppendRequest("s", b"")
    raw = bytes(range(256))
    encoded = base64.b64encode(raw).decode()
    assert parse_request("s", "append", {"payload_b64": encoded, "topic": "a/b"}) == AppendRequest(
        "s", raw, topic="a/b"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "exactly one of payload"),
        ({"payload": "a", "payload_b64": "YQ=="}, "exactly one of payload"),
        ({"payload": 5}, "payload: expected a string, got 5"),
        ({"payload_b64": "not base64!"}, "payload_b64: not valid base64"),
        ({"payload": "x", "topic": "a/+"}, "topic: "),
        ({"payload": "x", "topic": ""}, "topic: "),
        ({"payload": "x", "topic": "$SYS/x"}, "topic: must not start with '\\$'"),
        ({"payload": "x", "qos": 1}, "qos: unknown key"),
    ],
)
def test_append_refuses(body: dict[str, object], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        parse_request("s", "append", body)


def test_create_and_update_validate_the_config_like_the_yaml_file() -> None:
    config = {"topics": ["sensors/#"], "max_size": "1MiB", "ttl": "7d", "strategy_on_full": "reject_new"}
    created = parse_request("s", "create", {"config": config})
    assert isinstance(created, CreateRequest)
    assert created.config == StreamConfig(
        name="s", topics=("sensors/#",), max_size=1024 * 1024, ttl=7 * 86400.0, strategy_on_full="reject_new"
    )
    updated = parse_request("s", "update", {"config": {}})
    assert updated == UpdateRequest(StreamConfig(name="s", topics=()))
    with pytest.raises(RequestError, match=r"^streams\.s\.max_size: must be at least 1KiB$"):
        parse_request("s", "create", {"config": {"max_size": 10}})
    with pytest.raises(RequestError, match=r"^streams\.s\.topics\[0\]"):
        parse_request("s", "update", {"config": {"topics": ["a/#/b"]}})
    with pytest.raises(RequestError, match=r"^config: required"):
        parse_request("s", "create", {})
    with pytest.raises(RequestError, match=r"streams\.s: expected a mapping, got a list"):
        parse_request("s", "create", {"config": []})
    with pytest.raises(RequestError, match=r"invalid stream name 'bad name'"):
        parse_request("bad name", "create", {"config": {}})


def test_operations_without_keys() -> None:
    assert parse_request(None, "_list", {}) == ListRequest()
    assert parse_request("s", "describe", {}) == DescribeRequest("s")
    assert parse_request("s", "delete", {}) == DeleteRequest("s")
    for stream, operation in ((None, "_list"), ("s", "describe"), ("s", "delete")):
        with pytest.raises(RequestError, match="force: unknown key"):
            parse_request(stream, operation, {"force": True})


def test_parse_stream_config_names_the_stream_key() -> None:
    assert parse_stream_config("a", None) == StreamConfig(name="a", topics=())
    with pytest.raises(ConfigError) as refused:
        parse_stream_config("a", {"persistence": "disk"})
    assert str(refused.value) == "streams.a.persistence: expected one of file, memory, got 'disk'"
    with pytest.raises(ConfigError, match=r"^streams\._a: invalid stream name"):
        parse_stream_config("_a", {})


# --- responses ----------------------------------------------------------------------------------


def test_response_shapes() -> None:
    assert json.loads(encode_result("r1", {"sequence": 3})) == {
        "request_id": "r1",
        "ok": True,
        "result": {"sequence": 3},
    }
    assert json.loads(encode_error(None, "not_found", "no stream named 'x'")) == {
        "request_id": None,
        "ok": False,
        "error": {"type": "not_found", "message": "no stream named 'x'"},
    }
    # Text stays text on the wire (UTF-8), not \\u escapes.
    assert "héllo".encode() in encode_result(1, {"payload": "héllo"})


# --- access control ---------------------------------------------------------------------------

ACL = {
    "operator": TopicACL(
        publish=("headwater/streams/#", "headwater/replies/%u/#", "sensors/#"),
        subscribe=("headwater/streams/#", "headwater/replies/%u/#", "sensors/#"),
        stream_admin=("s", "tmp-*"),
    ),
    "dashboard": TopicACL(
        publish=("headwater/streams/+/read", "headwater/replies/%u/#", "alerts/#"),
        subscribe=("headwater/streams/telemetry/records", "headwater/replies/%u/#", "sensors/#", "alerts/#"),
    ),
    ANONYMOUS: TopicACL(publish=("headwater/streams/#",), subscribe=("headwater/streams/+/status",)),
}


@pytest.fixture
def permissions() -> RequestPermissions:
    access = AccessPolicy(ACL)
    gate = PublishGate(access=access, reserved_filters=("headwater/streams/+/status",))
    return RequestPermissions(prefix=PREFIX, access=access, gate=gate)


def test_reply_to_must_be_publishable_and_receivable(permissions: RequestPermissions) -> None:
    permissions.check_reply_to("operator", "headwater/replies/operator/cli-1")
    permissions.check_reply_to("operator", "sensors/anything")
    refusals = {
        # someone else's replies: neither publish nor receive
        ("operator", "headwater/replies/dashboard/x"): "may not both publish to and receive",
        # the dashboard receives sensors/# but may not publish there: answering there would let it
        # inject messages into the sensors' topics (alerts/#, both allowed, is fine: see below)
        ("dashboard", "sensors/a/telemetry"): "may not both publish to and receive",
        ("operator", "headwater/streams/telemetry/status"): "must not be under headwater/streams/",
        ("operator", "headwater/streams/x"): "must not be under headwater/streams/",
        ("operator", "$SYS/broker"): "must not start with '\\$'",
        ("operator", "sensors/+"): "reply_to: ",
        (None, "headwater/replies/anonymous/x"): "may not both publish to and receive",
    }
    for (username, reply_to), message in refusals.items():
        with pytest.raises(UnanswerableRequestError, match=message):
            permissions.check_reply_to(username, reply_to)
    permissions.check_reply_to("dashboard", "alerts/dashboard")


def test_no_acl_allows_any_reply_topic_outside_the_api() -> None:
    access = AccessPolicy(None)
    gate = PublishGate(access=access, reserved_filters=("headwater/streams/+/status",))
    open_permissions = RequestPermissions(prefix=PREFIX, access=access, gate=gate)
    open_permissions.check_reply_to(None, "anything/at/all")
    with pytest.raises(UnanswerableRequestError):
        open_permissions.check_reply_to(None, "headwater/streams/s/status")


def _forbidden(permissions: RequestPermissions, username: str | None, request: Request) -> str | None:
    """The ``forbidden`` message for ``request``, None when it is allowed."""
    try:
        permissions.check(username, request)
    except RequestError as exc:
        return f"{exc.type}: {exc.message}".removeprefix("forbidden: ")
    return None


def test_read_needs_subscribe_rights_on_the_records_topic(permissions: RequestPermissions) -> None:
    assert _forbidden(permissions, "operator", ReadRequest("telemetry")) is None
    assert _forbidden(permissions, "dashboard", ReadRequest("telemetry")) is None
    assert _forbidden(permissions, "dashboard", ReadRequest("audit")) == (
        "user 'dashboard' may not subscribe to headwater/streams/audit/records"
    )
    # Anonymous clients may see status topics, hence describe, but not read records.
    assert _forbidden(permissions, None, ReadRequest("telemetry")) == (
        "anonymous clients may not subscribe to headwater/streams/telemetry/records"
    )
    assert _forbidden(permissions, "nobody", ReadRequest("telemetry")) is not None


def test_describe_needs_subscribe_rights_on_the_status_topic(permissions: RequestPermissions) -> None:
    assert _forbidden(permissions, None, DescribeRequest("telemetry")) is None
    assert _forbidden(permissions, "operator", DescribeRequest("telemetry")) is None
    assert _forbidden(permissions, "dashboard", DescribeRequest("telemetry")) == (
        "user 'dashboard' may not subscribe to headwater/streams/telemetry/status"
    )
    assert permissions.may_describe(None, "x")
    assert not permissions.may_describe("dashboard", "telemetry")


def test_append_topic_and_create_filters_need_plain_mqtt_rights(permissions: RequestPermissions) -> None:
    assert _forbidden(permissions, "operator", AppendRequest("s", b"x", topic="sensors/a")) is None
    assert _forbidden(permissions, "operator", AppendRequest("s", b"x")) is None
    # The append right (derived: publishing the request) is checked first, then the topic.
    assert _forbidden(permissions, "dashboard", AppendRequest("s", b"x", topic="sensors/a")) == (
        "user 'dashboard' may not publish to headwater/streams/s/append"
    )
    assert _forbidden(permissions, None, AppendRequest("s", b"x", topic="sensors/a")) == (
        "anonymous clients may not publish to sensors/a"
    )
    # Never a record that claims a reserved status topic.
    assert _forbidden(permissions, "operator", AppendRequest("s", b"x", topic="headwater/streams/s/status"))
    sensors = StreamConfig(name="s", topics=("sensors/+/telemetry",))
    everything = StreamConfig(name="s", topics=("sensors/#", "#"))
    assert _forbidden(permissions, "operator", CreateRequest(sensors)) is None
    assert (
        _forbidden(permissions, "operator", UpdateRequest(everything))
        == "user 'operator' may not subscribe to #"
    )
    # Creating and deleting need the admin right, which no topic rule gives.
    assert _forbidden(permissions, None, CreateRequest(StreamConfig(name="s", topics=()))) == (
        "anonymous clients may not administer stream 's' (not in its streams.admin)"
    )
    assert _forbidden(permissions, None, DeleteRequest("s")) == (
        "anonymous clients may not administer stream 's' (not in its streams.admin)"
    )
    assert _forbidden(permissions, "operator", DeleteRequest("s")) is None


# --- stream rights per operation -------------------------------------------------------------

RIGHTS_ACL = {
    # The docs' example: reads everything (but dead-letter), appends to and administers a few.
    "ops": TopicACL(
        publish=("headwater/streams/#",),
        subscribe=("headwater/streams/#", "sensors/#"),
        stream_read=("*",),
        stream_append=("aggregates",),
        stream_admin=("aggregates", "tmp-*"),
    ),
    # May send update/delete/export requests, and read by topic rules, but administers nothing.
    "updater": TopicACL(publish=("headwater/streams/#",), subscribe=("headwater/streams/#", "sensors/#")),
    # Administers tmp-* but may read no stream: it may not set exports.
    "janitor": TopicACL(
        publish=("headwater/streams/#",), subscribe=("sensors/#",), stream_read=(), stream_admin=("tmp-*",)
    ),
    "auditor": TopicACL(publish=("headwater/streams/#",), stream_read=("dead-letter",)),
}
S3_EXPORT = {"exports": [{"id": "out", "type": "s3", "bucket": "somewhere-else"}]}


@pytest.fixture
def rights() -> RequestPermissions:
    access = AccessPolicy(RIGHTS_ACL)
    gate = PublishGate(access=access, reserved_filters=("headwater/streams/+/status",))
    return RequestPermissions(prefix=PREFIX, access=access, gate=gate)


def test_update_delete_and_export_switches_need_the_admin_right(rights: RequestPermissions) -> None:
    exfiltrate = parse_stream_config("telemetry", {"topics": ["sensors/#"], **S3_EXPORT})
    shrink = parse_stream_config("telemetry", {"topics": ["sensors/#"], "max_size": "1KiB"})
    not_admin = "user 'updater' may not administer stream 'telemetry' (not in its streams.admin)"
    assert _forbidden(rights, "updater", UpdateRequest(exfiltrate)) == not_admin
    assert _forbidden(rights, "updater", UpdateRequest(shrink)) == not_admin
    assert _forbidden(rights, "updater", DeleteRequest("telemetry")) == not_admin
    assert _forbidden(rights, "updater", ExportSwitchRequest("telemetry", "out", enabled=False)) == not_admin
    assert (
        _forbidden(rights, "updater", CreateRequest(StreamConfig(name="telemetry", topics=()))) == not_admin
    )
    # It still reads by its topic rules.
    assert _forbidden(rights, "updater", ReadRequest("telemetry")) is None
    assert rights.may_describe("updater", "telemetry")


def test_admins_administer_their_streams_only(rights: RequestPermissions) -> None:
    aggregates = parse_stream_config("aggregates", {"topics": ["sensors/#"], **S3_EXPORT})
    assert _forbidden(rights, "ops", UpdateRequest(aggregates)) is None
    assert _forbidden(rights, "ops", CreateRequest(parse_stream_config("tmp-1", S3_EXPORT))) is None
    assert _forbidden(rights, "ops", DeleteRequest("tmp-1")) is None
    assert _forbidden(rights, "ops", ExportSwitchRequest("aggregates", "out", enabled=True)) is None
    assert _forbidden(rights, "ops", DeleteRequest("telemetry")) == (
        "user 'ops' may not administer stream 'telemetry' (not in its streams.admin)"
    )
    # Admin and still the topic rule: a stream records only what its admin may subscribe to.
    assert _forbidden(rights, "ops", CreateRequest(StreamConfig(name="tmp-2", topics=("commands/#",)))) == (
        "user 'ops' may not subscribe to commands/#"
    )


def test_exports_also_need_the_read_right(rights: RequestPermissions) -> None:
    assert (
        _forbidden(rights, "janitor", CreateRequest(StreamConfig(name="tmp-1", topics=("sensors/#",))))
        is None
    )
    assert (
        _forbidden(rights, "janitor", UpdateRequest(parse_stream_config("tmp-1", {"max_size": "1MiB"})))
        is None
    )
    assert _forbidden(rights, "janitor", UpdateRequest(parse_stream_config("tmp-1", S3_EXPORT))) == (
        "user 'janitor' may not read stream 'tmp-1' (not in its streams.read)"
    )
    assert _forbidden(rights, "janitor", CreateRequest(parse_stream_config("tmp-2", S3_EXPORT))) is not None


def test_listed_read_and_append_rights_replace_the_topic_rules(rights: RequestPermissions) -> None:
    assert _forbidden(rights, "ops", ReadRequest("anything")) is None
    assert _forbidden(rights, "ops", AppendRequest("aggregates", b"x")) is None
    assert _forbidden(rights, "ops", AppendRequest("telemetry", b"x")) == (
        "user 'ops' may not append to stream 'telemetry' (not in its streams.append)"
    )
    # read: [] is no read right, whatever the topic rules say.
    assert _forbidden(rights, "janitor", ReadRequest("sensors")) == (
        "user 'janitor' may not read stream 'sensors' (not in its streams.read)"
    )


def test_dead_letter_needs_a_right_of_its_own(rights: RequestPermissions) -> None:
    for request in (ReadRequest("dead-letter"), DescribeRequest("dead-letter")):
        # Neither read: ["*"] nor subscribe rights on headwater/streams/# reach it.
        for user in ("ops", "updater"):
            message = _forbidden(rights, user, request)
            assert message is not None
            assert "(only 'dead-letter' itself in its streams.read grants it, no wildcard)" in message
        assert _forbidden(rights, "auditor", request) is None
    assert not rights.may_describe("ops", "dead-letter")
    assert rights.may_describe("auditor", "dead-letter")
    # An admin of "*"-like patterns cannot create it (with an export to its own bucket).
    assert _forbidden(rights, "updater", AppendRequest("dead-letter", b"forged")) is not None
    assert (
        _forbidden(rights, "janitor", CreateRequest(StreamConfig(name="dead-letter", topics=()))) is not None
    )


def test_without_an_acl_every_stream_operation_is_allowed() -> None:
    access = AccessPolicy(None)
    gate = PublishGate(access=access, reserved_filters=("headwater/streams/+/status",))
    open_permissions = RequestPermissions(prefix=PREFIX, access=access, gate=gate)
    for request in (
        ReadRequest("dead-letter"),
        DescribeRequest("dead-letter"),
        AppendRequest("dead-letter", b"x"),
        CreateRequest(parse_stream_config("x", S3_EXPORT)),
        UpdateRequest(parse_stream_config("dead-letter", S3_EXPORT)),
        DeleteRequest("dead-letter"),
        ExportSwitchRequest("x", "out", enabled=False),
    ):
        assert _forbidden(open_permissions, None, request) is None


# --- the client's side ----------------------------------------------------------------------------


@given(
    payload=st.binary(max_size=64),
    topic=st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t),
    sequence=st.integers(0, 2**63 - 1),
)
def test_records_survive_the_wire(payload: bytes, topic: str, sequence: int) -> None:
    record = StreamRecord(
        sequence=sequence, timestamp_ms=1_700_000_000_000, topic=topic, qos=1, client_id="c", payload=payload
    )
    wire = json.loads(json.dumps(record.to_json_dict()))
    assert StreamRecord.from_json_dict(wire) == record


def test_descriptions_survive_the_wire() -> None:
    description = StreamDescription(
        name="telemetry",
        persistence="file",
        state="failing",
        last_error="disk full",
        storage=StorageInfo(
            oldest_sequence=3,
            newest_sequence=9,
            total_bytes=700,
            record_count=7,
            dropped_oldest=3,
            rejected_new=1,
            expired=2,
        ),
        exports=(
            ExportInfo(
                id="k",
                type="kinesis",
                last_exported_sequence=5,
                last_export_time=1_700_000_000_000,
                exported_records=6,
                state="running",
                last_error=None,
            ),
        ),
    )
    wire = json.loads(json.dumps(description.to_json_dict()))
    assert StreamDescription.from_json_dict(wire) == description
    empty = StreamDescription(name="e", persistence="memory", storage=StorageInfo(None, None, 0, 0))
    assert StreamDescription.from_json_dict(json.loads(json.dumps(empty.to_json_dict()))) == empty


@pytest.mark.parametrize(
    "wire",
    [
        [],
        {"sequence": 1},
        {"sequence": "1", "timestamp": 1, "topic": "t", "qos": 1, "client_id": "c", "payload": ""},
        {"sequence": True, "timestamp": 1, "topic": "t", "qos": 1, "client_id": "c", "payload": ""},
        {"sequence": 1, "timestamp": 1, "topic": "t", "qos": 1, "client_id": "c", "payload_b64": "!!"},
    ],
)
def test_malformed_records_are_reported(wire: object) -> None:
    with pytest.raises(WireFormatError):
        StreamRecord.from_json_dict(wire)


@pytest.mark.parametrize(
    ("error_type", "exception"),
    [
        ("not_found", client.StreamNotFoundError),
        ("exists", client.StreamExistsError),
        ("rejected", client.StreamRejectedError),
        ("invalid", client.InvalidStreamRequestError),
        ("forbidden", client.ForbiddenError),
        ("failed", client.StreamApiError),
        ("something_new", client.StreamApiError),
    ],
)
def test_error_responses_become_typed_exceptions(error_type: str, exception: type[Exception]) -> None:
    response = encode_error("1", error_type, "why")  # type: ignore[arg-type]
    with pytest.raises(exception, match=r"^why$") as raised:
        client._result_of(decode_response(response))  # noqa: SLF001 - the pure half of request()
    assert isinstance(raised.value, client.StreamClientError)
    assert raised.value.error_type == error_type  # type: ignore[attr-defined]


def test_reply_topic_keeps_its_shape() -> None:
    assert reply_topic("headwater", "alice", "cli-1") == "headwater/replies/alice/cli-1"
    assert reply_topic("hw", None, "c") == "hw/replies/anonymous/c"
    assert reply_topic("hw", "a/b", "x/+#") == "hw/replies/a_b/x___"
    assert reply_topic("hw", "u", "") == "hw/replies/u/_"
