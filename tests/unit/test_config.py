"""Unit tests for headwater.core.config: the exact one-line errors, parsing and defaults."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.core.config import (
    ConfigError,
    HeadwaterConfig,
    ListenerConfig,
    format_size,
    load_config,
    parse_bandwidth,
    parse_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]
KINESIS_PLACEHOLDERS = "(expected one of: {client_id}, {sequence}, {stream}, {topic})"

# A small but complete config; tests deep-copy it and break one thing.
BASE: dict[str, Any] = {
    "broker": {"listeners": {"default": {"bind": "127.0.0.1:1883"}}},
    "streams": {
        "telemetry": {
            "topics": ["sensors/+/telemetry"],
            "exports": [{"id": "raw", "type": "kinesis", "stream_name": "raw-telemetry"}],
        }
    },
}


def config_with(*path_and_value: tuple[str, object]) -> dict[str, Any]:
    """BASE with values set at dotted paths (list items by index: ``streams.telemetry.exports.0.id``)."""
    data = copy.deepcopy(BASE)
    for dotted, value in path_and_value:
        *parents, last = dotted.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="test.yaml")
    assert "\n" not in str(info.value)
    return str(info.value)


def export_with(**keys: object) -> dict[str, Any]:
    """BASE with the one export replaced by ``keys``."""
    return config_with(("streams.telemetry.exports", [keys]))


def load_text(tmp_path: Path, text: str) -> HeadwaterConfig:
    file = tmp_path / "headwater.yaml"
    file.write_text(text, encoding="utf-8")
    return load_config(file)


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- shipped files ------------------------------------------------------------------------


def test_embedded_default_is_the_documented_one() -> None:
    config = load_config(None)
    assert config.source == "<embedded default>"
    assert config.data_dir == Path.cwd() / "headwater-data"
    assert config.topic_prefix == "headwater"
    assert config.broker.listeners == (ListenerConfig(name="default", host="127.0.0.1", port=1883),)
    assert config.broker.allow_anonymous is True
    assert config.broker.acl is None
    assert list(config.streams) == ["telemetry"]
    telemetry = config.streams["telemetry"]
    assert telemetry.topics == ("sensors/+/telemetry",)
    assert telemetry.persistence == "file"
    assert telemetry.max_size == 256 * 1024 * 1024
    assert telemetry.exports == ()
    assert config.deploy.enabled is True


def test_embedded_default_file_is_what_the_package_ships() -> None:
    assert load_config(REPO / "config" / "headwater.yaml").streams == load_config(None).streams


def test_full_example_loads_as_shipped() -> None:
    config = load_config(REPO / "config" / "examples" / "full.yaml")
    exports = [export for stream in config.streams.values() for export in stream.exports]
    assert {export.type for export in exports} == {"kinesis", "firehose", "s3", "iot_core"}
    assert {listener.type for listener in config.broker.listeners} == {"tcp", "ws"}
    assert config.broker.acl is not None
    assert config.broker.acl["pump"].client_ids == ("%u", "%u-*")
    assert config.broker.acl["auditor"].deny_subscribe == ("commands/+/unlock", "sensors/+/credentials")
    assert config.broker.limits.max_packet_size == 8 * 1024 * 1024
    assert config.broker.password_file == Path("/etc/headwater/passwd")
    assert config.uploads.max_bandwidth == 250_000
    assert config.deploy.policy.allowed_bind_mounts


# --- the document as a whole --------------------------------------------------------------


def test_an_empty_mapping_gives_every_default() -> None:
    config = parse_config({}, source="x.yaml")
    assert config.source == "x.yaml"
    assert config.data_dir == Path.cwd() / "headwater-data"
    assert config.topic_prefix == "headwater"
    assert config.broker.listeners == (ListenerConfig(name="default", host="127.0.0.1", port=1883),)
    assert config.broker.allow_anonymous is True
    assert config.broker.allow_anonymous_explicit is False
    assert config.broker.password_file is None
    assert config.broker.acl is None
    assert config.aws.region == "us-east-1"
    assert config.aws.endpoint_url is None
    assert config.aws.endpoints == {}
    assert config.streams == {}
    assert config.uploads.max_bandwidth is None
    assert config.deploy.enabled is True
    assert config.deploy.pull == "missing"
    assert config.deploy.policy.allow_privileged is False
    assert config.deploy.policy.allow_host_network is False
    assert config.deploy.policy.allowed_bind_mounts == ()


def test_empty_document() -> None:
    assert error_of(None) == (
        "test.yaml: the config is empty (expected a mapping with keys such as broker, streams)"
    )


def test_document_must_be_a_mapping() -> None:
    assert error_of(["broker"]) == "test.yaml: the config must be a mapping of sections, got a list"


def test_empty_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "# nothing but a comment\n")
    assert message.endswith(
        "headwater.yaml: the config is empty (expected a mapping with keys such as broker, streams)"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: cannot read config file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read config file: Is a directory"


def test_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes(b"topic_prefix: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value) == f"{file}: cannot read config file: not UTF-8 text"


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    message = load_error(tmp_path, "broker:\n  listeners: [a\n  allow_anonymous: true\n")
    assert message == (
        f"{tmp_path / 'headwater.yaml'}: invalid YAML at line 3, column 18: expected ',' or ']', but got ':'"
    )


def test_yaml_duplicate_key_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, "streams:\n  a: {}\n  a: {topics: ['x']}\n")
    assert (
        message == f"{tmp_path / 'headwater.yaml'}: invalid YAML at line 3, column 3: found duplicate key 'a'"
    )


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "streams:\n  a: &base {topics: ['x'], max_size: 1MiB}\n  b:\n    <<: *base\n    max_size: 2MiB\n",
    )
    assert config.streams["b"].max_size == 2 * 1024 * 1024
    assert config.streams["b"].topics == ("x",)


def test_key_errors_from_a_file_name_the_key_only(tmp_path: Path) -> None:
    assert (
        load_error(tmp_path, "streams:\n  t: {max_size: 10B}\n")
        == "streams.t.max_size: must be at least 1KiB"
    )


# --- YAML 1.2 scalars ---------------------------------------------------------------------


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "ON"])
def test_yaml_11_booleans_are_strings_and_refused(tmp_path: Path, word: str) -> None:
    message = load_error(tmp_path, f"broker:\n  allow_anonymous: {word}\n")
    assert message == f"broker.allow_anonymous: expected a boolean, got '{word}'"


@pytest.mark.parametrize(
    ("word", "value"), [("true", True), ("false", False), ("True", True), ("FALSE", False)]
)
def test_yaml_12_booleans(tmp_path: Path, word: str, value: bool) -> None:
    assert load_text(tmp_path, f"deploy: {{enabled: {word}}}\n").deploy.enabled is value


def test_sexagesimal_is_not_a_number(tmp_path: Path) -> None:
    message = load_error(tmp_path, "streams:\n  t: {ttl: 1:30}\n")
    assert message == "streams.t.ttl: expected a duration such as 30s, got '1:30'"


def test_leading_zero_is_not_octal(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, "streams:\n  t:\n    exports: [{id: a, type: kinesis, stream_name: s, priority: 010}]\n"
    )
    assert message == "streams.t.exports[0].priority: expected an integer, got '010'"


# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"brokers": {}},
            (
                "brokers: unknown key "
                "(expected one of: aws, broker, data_dir, deploy, streams, topic_prefix, uploads)"
            ),
        ),
        (
            {"broker": {"listners": {}}},
            (
                "broker.listners: unknown key "
                "(expected one of: acl, allow_anonymous, limits, listeners, password_file)"
            ),
        ),
        (
            {"broker": {"listeners": {"a": {"bind": "127.0.0.1:1", "port": 2}}}},
            "broker.listeners.a.port: unknown key (expected one of: allow_anonymous, bind, tls, type)",
        ),
        (
            {"broker": {"acl": {"bob": {"read": ["#"]}}}},
            (
                "broker.acl.bob.read: unknown key "
                "(expected one of: client_ids, deny, publish, streams, subscribe)"
            ),
        ),
        (
            {"broker": {"acl": {"bob": {"deny": {"receive": ["#"]}}}}},
            "broker.acl.bob.deny.receive: unknown key (expected one of: publish, subscribe)",
        ),
        (
            {"aws": {"endpoints": {"sqs": "http://localhost:4566"}}},
            (
                "aws.endpoints.sqs: unknown key "
                "(expected one of: ecr, firehose, iot-data, kinesis, s3, secretsmanager)"
            ),
        ),
        (
            {"streams": {"t": {"topic": ["a"]}}},
            (
                "streams.t.topic: unknown key (expected one of: drop_exported, exports, flush_on_write, "
                "max_size, persistence, strategy_on_full, topics, ttl)"
            ),
        ),
        (
            {"uploads": {"bandwidth": "1Mbit/s"}},
            "uploads.bandwidth: unknown key (expected one of: max_backoff, max_bandwidth, priority_aging)",
        ),
        (
            {"deploy": {"policy": {"allow_root": True}}},
            (
                "deploy.policy.allow_root: unknown key (expected one of: allow_external_networks, "
                "allow_external_volumes, allow_host_network, allow_kernel_tuning, allow_privileged, "
                "allowed_bind_mounts)"
            ),
        ),
    ],
)
def test_unknown_keys(data: object, message: str) -> None:
    assert error_of(data) == message


def test_unknown_export_key_lists_common_and_type_keys() -> None:
    assert error_of(export_with(id="a", type="kinesis", stream_name="s", bucket="b")) == (
        "streams.telemetry.exports[0].bucket: unknown key (expected one of: batch_interval, batch_size, id, "
        "max_bandwidth, partition_key, priority, start, stream_name, type)"
    )


def test_keys_of_another_export_type_are_refused() -> None:
    message = error_of(export_with(id="a", type="firehose", delivery_stream="d", partition_key="{topic}"))
    assert message.startswith("streams.telemetry.exports[0].partition_key: unknown key (expected one of: ")


def test_a_key_with_a_newline_is_quoted() -> None:
    assert error_of({"broker": {"a\nb": 1}}) == (
        "broker.'a\\nb': unknown key "
        "(expected one of: acl, allow_anonymous, limits, listeners, password_file)"
    )


def test_non_string_key() -> None:
    assert error_of({"streams": {1: {}}}) == "streams: keys must be strings, got 1"


# --- wrong types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"broker": {"allow_anonymous": "yes"}}, "broker.allow_anonymous: expected a boolean, got 'yes'"),
        ({"broker": {"allow_anonymous": 1}}, "broker.allow_anonymous: expected a boolean, got 1"),
        ({"broker": {"allow_anonymous": None}}, "broker.allow_anonymous: expected a boolean, got null"),
        ({"broker": []}, "broker: expected a mapping, got a list"),
        ({"broker": {"listeners": ["127.0.0.1:1883"]}}, "broker.listeners: expected a mapping, got a list"),
        ({"topic_prefix": 5}, "topic_prefix: expected a string, got 5"),
        ({"data_dir": True}, "data_dir: expected a string, got true"),
        ({"streams": {"t": {"topics": "a/b"}}}, "streams.t.topics: expected a list, got 'a/b'"),
        ({"streams": {"t": {"topics": ["a", 3]}}}, "streams.t.topics[1]: expected a string, got 3"),
        (
            {"streams": {"t": {"max_size": 1.5}}},
            "streams.t.max_size: expected a size such as 256MiB, got 1.5",
        ),
        ({"streams": {"t": {"ttl": [1]}}}, "streams.t.ttl: expected a duration such as 30s, got a list"),
        (
            {"streams": {"t": {"persistence": "disk"}}},
            "streams.t.persistence: expected one of file, memory, got 'disk'",
        ),
        (
            {"streams": {"t": {"strategy_on_full": "drop"}}},
            "streams.t.strategy_on_full: expected one of overwrite_oldest, reject_new, got 'drop'",
        ),
        ({"streams": {"t": {"exports": {"id": "a"}}}}, "streams.t.exports: expected a list, got a mapping"),
        (
            {"uploads": {"max_bandwidth": 1000}},
            "uploads.max_bandwidth: expected a bandwidth such as 2Mbit/s, got 1000",
        ),
        (
            {"deploy": {"pull": "sometimes"}},
            "deploy.pull: expected one of always, missing, never, got 'sometimes'",
        ),
        (
            {"aws": {"endpoint_url": "localhost:4566"}},
            "aws.endpoint_url: expected an http:// or https:// URL, got 'localhost:4566'",
        ),
        (
            {"broker": {"listeners": {"a": {"bind": 1883}}}},
            "broker.listeners.a.bind: expected host:port such as 127.0.0.1:1883 or [::1]:1883, got 1883",
        ),
        (
            {"broker": {"listeners": {"a": {"bind": "127.0.0.1:1", "type": "wss"}}}},
            "broker.listeners.a.type: expected one of tcp, ws, got 'wss'",
        ),
        ({"broker": {"acl": {"bob": ["#"]}}}, "broker.acl.bob: expected a mapping, got a list"),
    ],
)
def test_wrong_types(data: object, message: str) -> None:
    assert error_of(data) == message


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"type": "kinesis", "stream_name": "s"}, "streams.telemetry.exports[0].id: required"),
        ({"id": "a", "stream_name": "s"}, "streams.telemetry.exports[0].type: required"),
        (
            {"id": "a", "type": "sqs"},
            "streams.telemetry.exports[0].type: expected one of kinesis, firehose, s3, iot_core, got 'sqs'",
        ),
        ({"id": "a", "type": "kinesis"}, "streams.telemetry.exports[0].stream_name: required"),
        ({"id": "a", "type": "firehose"}, "streams.telemetry.exports[0].delivery_stream: required"),
        ({"id": "a", "type": "s3"}, "streams.telemetry.exports[0].bucket: required"),
        (
            {"id": "a", "type": "kinesis", "stream_name": "s", "priority": "high"},
            "streams.telemetry.exports[0].priority: expected an integer, got 'high'",
        ),
        (
            {"id": "a", "type": "kinesis", "stream_name": "s", "priority": True},
            "streams.telemetry.exports[0].priority: expected an integer, got true",
        ),
        (
            {"id": "a", "type": "kinesis", "stream_name": "s", "batch_size": 10.0},
            "streams.telemetry.exports[0].batch_size: expected an integer, got 10.0",
        ),
        (
            {"id": "a", "type": "kinesis", "stream_name": "s", "start": "latest"},
            "streams.telemetry.exports[0].start: expected oldest, newest or a sequence number, got 'latest'",
        ),
        (
            {"id": "a", "type": "kinesis", "stream_name": "s", "start": True},
            "streams.telemetry.exports[0].start: expected oldest, newest or a sequence number, got true",
        ),
        (
            {"id": "a", "type": "s3", "bucket": "bucket", "compression": "zstd"},
            "streams.telemetry.exports[0].compression: expected one of gzip, none, got 'zstd'",
        ),
        (
            {"id": "a", "type": "firehose", "delivery_stream": "d", "delimiter": 10},
            "streams.telemetry.exports[0].delimiter: expected a string, got 10",
        ),
        (
            {"id": 7, "type": "kinesis", "stream_name": "s"},
            "streams.telemetry.exports[0].id: expected a string, got 7",
        ),
    ],
)
def test_export_errors(keys: dict[str, object], message: str) -> None:
    assert error_of(export_with(**keys)) == message


def test_export_must_be_a_mapping() -> None:
    assert error_of(config_with(("streams.telemetry.exports", ["raw"]))) == (
        "streams.telemetry.exports[0]: expected a mapping, got 'raw'"
    )


# --- impossible values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"streams": {"telemetry": {"max_size": "512B"}}},
            "streams.telemetry.max_size: must be at least 1KiB",
        ),
        ({"streams": {"telemetry": {"max_size": 1023}}}, "streams.telemetry.max_size: must be at least 1KiB"),
        ({"streams": {"t": {"max_size": "-1MiB"}}}, "streams.t.max_size: must not be negative, got '-1MiB'"),
        (
            {"streams": {"t": {"max_size": "1TiB"}}},
            "streams.t.max_size: unknown size unit 'TiB' in '1TiB' (expected B, KiB, MiB, GiB, KB, MB, GB)",
        ),
        ({"streams": {"t": {"ttl": "-5m"}}}, "streams.t.ttl: must not be negative, got '-5m'"),
        ({"streams": {"t": {"ttl": 0}}}, "streams.t.ttl: must be greater than zero, got 0"),
        (
            {"streams": {"t": {"ttl": "7w"}}},
            "streams.t.ttl: unknown duration unit 'w' in '7w' (expected ms, s, m, h, d)",
        ),
        (
            {"streams": {"t": {"persistence": "memory", "flush_on_write": True}}},
            "streams.t.flush_on_write: needs persistence: file (a memory stream has nothing to fsync)",
        ),
        (
            {"uploads": {"max_bandwidth": "0Mbit/s"}},
            "uploads.max_bandwidth: must be greater than zero, got '0Mbit/s'",
        ),
        (
            {"uploads": {"max_bandwidth": "2Mbit"}},
            "uploads.max_bandwidth: expected a bandwidth such as 2Mbit/s, got '2Mbit'",
        ),
        ({"broker": {"listeners": {}}}, "broker.listeners: at least one listener is required"),
        (
            {"aws": {"region": "US East"}},
            "aws.region: invalid AWS region 'US East' (expected a name such as us-east-1)",
        ),
        ({"aws": {"endpoints": {"s3": None}}}, "aws.endpoints.s3: expected a string, got null"),
        (
            {"deploy": {"policy": {"allowed_bind_mounts": ["data"]}}},
            "deploy.policy.allowed_bind_mounts[0]: must be an absolute path, got 'data'",
        ),
        ({"data_dir": ""}, "data_dir: must not be empty"),
    ],
)
def test_impossible_values(data: object, message: str) -> None:
    assert error_of(data) == message


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"priority": 0}, "priority: must be between 1 and 10, got 0"),
        ({"priority": 11}, "priority: must be between 1 and 10, got 11"),
        ({"batch_size": 0}, "batch_size: must be between 1 and 500, got 0"),
        ({"batch_size": 501}, "batch_size: must be between 1 and 500, got 501"),
        ({"batch_interval": "-1s"}, "batch_interval: must not be negative, got '-1s'"),
        ({"batch_interval": -0.5}, "batch_interval: must not be negative, got -0.5"),
        ({"start": -1}, "start: must be at least 0, got -1"),
        ({"max_bandwidth": "fast"}, "max_bandwidth: expected a bandwidth such as 2Mbit/s, got 'fast'"),
        (
            {"stream_name": "raw telemetry"},
            (
                "stream_name: invalid Kinesis stream name 'raw telemetry' "
                "(expected 1-128 characters of A-Z a-z 0-9 _ . -)"
            ),
        ),
        (
            {"partition_key": "{device}"},
            f"partition_key: unknown placeholder {{device}} {KINESIS_PLACEHOLDERS}",
        ),
        (
            {"partition_key": "{}"},
            f"partition_key: unknown placeholder {{}} {KINESIS_PLACEHOLDERS}",
        ),
        (
            {"partition_key": "{sequence:08d}"},
            "partition_key: placeholder {sequence} takes no format spec or conversion",
        ),
        (
            {"partition_key": "{topic!r}"},
            "partition_key: placeholder {topic} takes no format spec or conversion",
        ),
        (
            {"partition_key": "{topic"},
            "partition_key: invalid template '{topic': expected '}' before end of string",
        ),
        ({"partition_key": ""}, "partition_key: must not be empty"),
    ],
)
def test_kinesis_export_values(keys: dict[str, object], message: str) -> None:
    data = export_with(**{"id": "raw", "type": "kinesis", "stream_name": "raw-telemetry", **keys})
    assert error_of(data) == f"streams.telemetry.exports[0].{message}"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"bucket": "My_Bucket"},
            (
                "bucket: invalid S3 bucket name 'My_Bucket' "
                "(expected 3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit)"
            ),
        ),
        (
            {"key": "{stream}/{date}.gz"},
            (
                "key: unknown placeholder {date} (expected one of: "
                "{HH}, {dd}, {first_sequence}, {last_sequence}, {mm}, {stream}, {yyyy})"
            ),
        ),
        ({"key": "/{stream}.gz"}, "key: must not start with '/', got '/{stream}.gz'"),
        ({"max_object_size": "6GiB"}, "max_object_size: must be at most 5GiB (S3's single PUT limit)"),
        ({"max_object_size": "1B"}, "max_object_size: must be at least 1KiB"),
        ({"max_object_age": "0s"}, "max_object_age: must be greater than zero, got '0s'"),
        ({"batch_size": 0}, "batch_size: must be at least 1, got 0"),
    ],
)
def test_s3_export_values(keys: dict[str, object], message: str) -> None:
    data = export_with(**{"id": "archive", "type": "s3", "bucket": "archive-bucket", **keys})
    assert error_of(data) == f"streams.telemetry.exports[0].{message}"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"qos": 2}, "qos: must be between 0 and 1, got 2"),
        (
            {"topic": "gw/{device}"},
            "topic: unknown placeholder {device} (expected one of: {client_id}, {stream}, {topic})",
        ),
        (
            {"topic": "gw/+/{topic}"},
            "topic: must be a topic name, not a filter (no +, #), got 'gw/+/{topic}'",
        ),
        (
            {"topic": "$aws/things/{topic}"},
            "topic: must not start with '$' (reserved by AWS IoT), got '$aws/things/{topic}'",
        ),
    ],
)
def test_iot_core_export_values(keys: dict[str, object], message: str) -> None:
    data = export_with(**{"id": "cloud", "type": "iot_core", **keys})
    assert error_of(data) == f"streams.telemetry.exports[0].{message}"


def test_firehose_batch_size_is_capped_at_500() -> None:
    data = export_with(id="f", type="firehose", delivery_stream="d", batch_size=501)
    assert error_of(data) == "streams.telemetry.exports[0].batch_size: must be between 1 and 500, got 501"


def test_duplicate_export_ids() -> None:
    data = config_with(
        (
            "streams.telemetry.exports",
            [
                {"id": "raw", "type": "kinesis", "stream_name": "a"},
                {"id": "raw", "type": "firehose", "delivery_stream": "b"},
            ],
        )
    )
    assert error_of(data) == "streams.telemetry.exports[1].id: duplicate export id 'raw'"


def test_same_export_id_in_two_streams_is_fine() -> None:
    export = {"id": "raw", "type": "kinesis", "stream_name": "a"}
    config = parse_config({"streams": {"a": {"exports": [export]}, "b": {"exports": [export]}}}, source="t")
    assert [s.exports[0].id for s in config.streams.values()] == ["raw", "raw"]


@pytest.mark.parametrize("name", ["", "-lead", "has space", "x" * 129, "é", "a/b"])
def test_bad_export_ids(name: str) -> None:
    message = error_of(export_with(id=name, type="kinesis", stream_name="s"))
    assert message == (
        f"streams.telemetry.exports[0].id: invalid export id {name!r} "
        "(expected 1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
    )


@pytest.mark.parametrize("name", ["-lead", "has space", "x" * 129, "a/b", "_x"])
def test_bad_stream_names(name: str) -> None:
    assert error_of({"streams": {name: {}}}) == (
        f"streams.{name}: invalid stream name {name!r} "
        "(expected 1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit)"
    )


@pytest.mark.parametrize("name", ["a", "A.b-c_d", "0", "x" * 128])
def test_good_names(name: str) -> None:
    config = parse_config({"streams": {name: {"exports": [{"id": name, "type": "iot_core"}]}}}, source="t")
    assert config.streams[name].name == name
    assert config.streams[name].exports[0].id == name


# --- topic filters and the prefix ---------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "invalid topic filter '': must not be empty"),
        ("a/#/b", "invalid topic filter 'a/#/b': '#' must be the last level"),
        ("a/b#", "invalid topic filter 'a/b#': '#' must be a whole level"),
        ("a/b+/c", "invalid topic filter 'a/b+/c': '+' must be a whole level"),
        ("a\x00b", "invalid topic filter 'a\\x00b': must not contain U+0000"),
    ],
)
def test_bad_topic_filters(topic: str, reason: str) -> None:
    assert error_of({"streams": {"t": {"topics": ["ok/#", topic]}}}) == f"streams.t.topics[1]: {reason}"
    assert (
        error_of({"broker": {"acl": {"bob": {"subscribe": [topic]}}}})
        == f"broker.acl.bob.subscribe[0]: {reason}"
    )
    assert (
        error_of({"broker": {"acl": {"bob": {"deny": {"publish": ["ok", topic]}}}}})
        == f"broker.acl.bob.deny.publish[1]: {reason}"
    )


@pytest.mark.parametrize("topic", ["#", "+", "a/+/b", "a/#", "+/+/#", "/a", "a//b", "$SYS/#"])
def test_good_topic_filters(topic: str) -> None:
    assert parse_config({"streams": {"t": {"topics": [topic]}}}, source="t").streams["t"].topics == (topic,)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("", "topic_prefix: invalid topic name '': must not be empty"),
        ("$headwater", "topic_prefix: must not start with '$', got '$headwater'"),
        ("hw/#", "topic_prefix: invalid topic name 'hw/#': must not contain the wildcards '+' or '#'"),
        ("hw/+", "topic_prefix: invalid topic name 'hw/+': must not contain the wildcards '+' or '#'"),
        ("hw/", "topic_prefix: must not have empty levels, got 'hw/'"),
        ("/hw", "topic_prefix: must not have empty levels, got '/hw'"),
        ("a//b", "topic_prefix: must not have empty levels, got 'a//b'"),
    ],
)
def test_bad_topic_prefix(prefix: str, message: str) -> None:
    assert error_of({"topic_prefix": prefix}) == message


def test_multi_level_topic_prefix() -> None:
    assert parse_config({"topic_prefix": "site-7/headwater"}, source="t").topic_prefix == "site-7/headwater"


# --- listeners ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("127.0.0.1:1883", "127.0.0.1", 1883),
        ("0.0.0.0:0", "0.0.0.0", 0),  # noqa: S104 -- a value under test, not a bind
        ("[::1]:1883", "::1", 1883),
        ("[::]:65535", "::", 65535),
        ("localhost:8883", "localhost", 8883),
        ("gateway-7.example.com:1883", "gateway-7.example.com", 1883),
    ],
)
def test_good_binds(bind: str, host: str, port: int) -> None:
    data = {"broker": {"listeners": {"l": {"bind": bind}}, "password_file": "pw"}}
    listener = parse_config(data, source="t").broker.listeners[0]
    assert (listener.host, listener.port) == (host, port)


@pytest.mark.parametrize(
    ("bind", "reason"),
    [
        ("1883", "expected host:port such as 127.0.0.1:1883 or [::1]:1883, got '1883'"),
        (":1883", "expected host:port such as 127.0.0.1:1883 or [::1]:1883, got ':1883'"),
        ("127.0.0.1:", "port must be a number between 0 and 65535, got '127.0.0.1:'"),
        ("127.0.0.1:65536", "port must be a number between 0 and 65535, got '127.0.0.1:65536'"),
        ("127.0.0.1:-1", "port must be a number between 0 and 65535, got '127.0.0.1:-1'"),
        ("127.0.0.1:http", "port must be a number between 0 and 65535, got '127.0.0.1:http'"),
        ("::1:1883", "IPv6 addresses need brackets, e.g. [::1]:1883 in '::1:1883'"),
        ("[::1:1883", "IPv6 addresses need brackets, e.g. [::1]:1883 in '[::1:1883'"),
        ("::1]:1883", "IPv6 addresses need brackets, e.g. [::1]:1883 in '::1]:1883'"),
        ("[nope]:1883", "invalid IPv6 address 'nope' in '[nope]:1883'"),
        ("256.0.0.1:1883", "invalid IPv4 address '256.0.0.1' in '256.0.0.1:1883'"),
        ("bad_host:1883", "invalid host name 'bad_host' in 'bad_host:1883'"),
    ],
)
def test_bad_binds(bind: str, reason: str) -> None:
    assert error_of({"broker": {"listeners": {"l": {"bind": bind}}}}) == f"broker.listeners.l.bind: {reason}"


def test_bind_is_required() -> None:
    assert error_of({"broker": {"listeners": {"l": {"type": "ws"}}}}) == "broker.listeners.l.bind: required"


@pytest.mark.parametrize(
    ("first", "second"),
    [("127.0.0.1:1883", "127.0.0.1:1883"), ("127.0.0.1:1883", "0.0.0.0:1883"), ("[::]:1883", "[::1]:1883")],
)
def test_overlapping_listeners(first: str, second: str) -> None:
    data = {"broker": {"listeners": {"a": {"bind": first}, "b": {"bind": second}}}}
    assert error_of(data) == "broker.listeners.b.bind: port 1883 is already bound by listener 'a'"


@pytest.mark.parametrize(
    ("first", "second"),
    [("127.0.0.1:0", "127.0.0.1:0"), ("0.0.0.0:1883", "[::]:1883"), ("127.0.0.1:1883", "127.0.0.2:1883")],
)
def test_listeners_that_can_coexist(first: str, second: str) -> None:
    data = {"broker": {"listeners": {"a": {"bind": first}, "b": {"bind": second}}, "password_file": "pw"}}
    assert len(parse_config(data, source="t").broker.listeners) == 2


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),  # noqa: S104 -- a value under test, not a bind
        ("::", False),
        ("192.168.1.10", False),
        ("gateway.local", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert ListenerConfig(name="l", host=host, port=1883).is_loopback is loopback


def test_anonymous_defaults_to_true_on_loopback_only() -> None:
    listeners = {"a": {"bind": "127.0.0.1:1883"}, "b": {"bind": "[::1]:1883", "type": "ws"}}
    broker = parse_config({"broker": {"listeners": listeners}}, source="t").broker
    assert broker.allow_anonymous is True
    assert broker.allow_anonymous_explicit is False


def test_anonymous_defaults_to_false_when_any_listener_is_not_loopback() -> None:
    listeners = {"a": {"bind": "127.0.0.1:1883"}, "b": {"bind": "0.0.0.0:1884"}}
    broker = parse_config({"broker": {"listeners": listeners, "password_file": "pw"}}, source="t").broker
    assert broker.allow_anonymous is False
    assert broker.allow_anonymous_explicit is False


@pytest.mark.parametrize("value", [True, False])
def test_anonymous_written_out_is_explicit(value: bool) -> None:
    listeners = {"a": {"bind": "0.0.0.0:1883"}}
    data = {"broker": {"listeners": listeners, "allow_anonymous": value, "password_file": "pw"}}
    broker = parse_config(data, source="t").broker
    assert broker.allow_anonymous is value
    assert broker.allow_anonymous_explicit is True


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("certfile", "keyfile", "cafile"):
        (tmp_path / f"{name}.pem").write_text("not checked here\n", encoding="utf-8")
        files[name] = str(tmp_path / f"{name}.pem")
    return files


def tls_listener(tls: dict[str, object]) -> dict[str, object]:
    return {"broker": {"listeners": {"secure": {"bind": "0.0.0.0:8883", "tls": tls}}, "password_file": "pw"}}


def test_tls_listener(pem_files: dict[str, str]) -> None:
    tls = (
        parse_config(tls_listener({**pem_files, "require_client_cert": True}), source="t")
        .broker.listeners[0]
        .tls
    )
    assert tls is not None
    assert tls.certfile == Path(pem_files["certfile"])
    assert tls.keyfile == Path(pem_files["keyfile"])
    assert tls.cafile == Path(pem_files["cafile"])
    assert tls.require_client_cert is True


@pytest.mark.usefixtures("pem_files")
def test_tls_files_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tls = parse_config(tls_listener({"certfile": "certfile.pem", "keyfile": "./keyfile.pem"}), source="t")
    listener_tls = tls.broker.listeners[0].tls
    assert listener_tls is not None
    assert listener_tls.certfile == tmp_path / "certfile.pem"
    assert listener_tls.cafile is None


def test_tls_missing_certfile(pem_files: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    assert error_of(tls_listener({**pem_files, "certfile": str(missing)})) == (
        f"broker.listeners.secure.tls.certfile: file not found: {missing}"
    )


def test_tls_keyfile_is_a_directory(pem_files: dict[str, str], tmp_path: Path) -> None:
    assert error_of(tls_listener({**pem_files, "keyfile": str(tmp_path)})) == (
        f"broker.listeners.secure.tls.keyfile: not a regular file: {tmp_path}"
    )


def test_tls_keyfile_required(pem_files: dict[str, str]) -> None:
    assert (
        error_of(tls_listener({"certfile": pem_files["certfile"]}))
        == "broker.listeners.secure.tls.keyfile: required"
    )


def test_tls_client_certs_need_a_ca(pem_files: dict[str, str]) -> None:
    tls = {"certfile": pem_files["certfile"], "keyfile": pem_files["keyfile"], "require_client_cert": True}
    assert error_of(tls_listener(tls)) == (
        "broker.listeners.secure.tls.require_client_cert: "
        "requires cafile (the CA that signs client certificates)"
    )


# --- broker: password file and ACL --------------------------------------------------------


def test_password_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = parse_config({"broker": {"password_file": "passwd"}}, source="t").broker
    assert broker.password_file == tmp_path / "passwd"


def test_acl() -> None:
    acl = {
        "anonymous": {"publish": ["sensors/#"]},
        "operator": {"publish": ["#"], "subscribe": ["#"]},
        "nobody": None,
    }
    broker = parse_config({"broker": {"acl": acl}}, source="t").broker
    assert broker.acl is not None
    assert broker.acl["anonymous"].publish == ("sensors/#",)
    assert broker.acl["anonymous"].subscribe == ()
    assert broker.acl["operator"].subscribe == ("#",)
    assert broker.acl["nobody"].publish == ()


def test_acl_deny_filters() -> None:
    acl = {"dev": {"subscribe": ["+/+"], "deny": {"subscribe": ["test/nosubscribe"], "publish": ["#"]}}}
    broker = parse_config({"broker": {"acl": acl}}, source="t").broker
    assert broker.acl is not None
    assert broker.acl["dev"].deny_subscribe == ("test/nosubscribe",)
    assert broker.acl["dev"].deny_publish == ("#",)
    no_deny = parse_config({"broker": {"acl": {"dev": {"deny": None}}}}, source="t").broker.acl
    assert no_deny is not None
    assert (no_deny["dev"].deny_publish, no_deny["dev"].deny_subscribe) == ((), ())
    assert error_of({"broker": {"acl": {"dev": {"deny": ["#"]}}}}) == (
        "broker.acl.dev.deny: expected a mapping, got a list"
    )


def test_acl_absent_or_null_is_none_and_empty_is_empty() -> None:
    assert parse_config({"broker": {}}, source="t").broker.acl is None
    assert parse_config({"broker": {"acl": None}}, source="t").broker.acl is None
    assert parse_config({"broker": {"acl": {}}}, source="t").broker.acl == {}


def test_acl_user_name_must_not_be_empty() -> None:
    assert error_of({"broker": {"acl": {"": {}}}}) == "broker.acl: user names must not be empty"


# --- streams and exports: values and defaults ---------------------------------------------


def test_stream_defaults() -> None:
    stream = parse_config({"streams": {"t": None}}, source="t").streams["t"]
    assert stream.name == "t"
    assert stream.topics == ()
    assert stream.persistence == "file"
    assert stream.max_size == 256 * 1024 * 1024
    assert stream.strategy_on_full == "overwrite_oldest"
    assert stream.ttl is None
    assert stream.flush_on_write is False
    assert stream.drop_exported is False
    assert stream.exports == ()


def test_stream_values() -> None:
    data = {
        "streams": {
            "t": {
                "topics": ["a/#"],
                "persistence": "memory",
                "max_size": "1KiB",
                "strategy_on_full": "reject_new",
                "ttl": "1.5h",
                "drop_exported": True,
                "exports": None,
            }
        }
    }
    stream = parse_config(data, source="t").streams["t"]
    assert (stream.persistence, stream.max_size, stream.strategy_on_full) == ("memory", 1024, "reject_new")
    assert stream.ttl == 5400.0
    assert stream.drop_exported is True
    assert stream.exports == ()


def test_export_common_defaults() -> None:
    export = parse_config(BASE, source="t").streams["telemetry"].exports[0]
    assert export.id == "raw"
    assert export.type == "kinesis"
    assert export.priority == 5
    assert export.batch_size == 500
    assert export.batch_interval == 1.0
    assert export.max_bandwidth is None
    assert export.start == "oldest"
    assert export.options == {"stream_name": "raw-telemetry", "partition_key": "{topic}"}


def test_export_common_values() -> None:
    data = export_with(
        id="raw",
        type="kinesis",
        stream_name="s",
        priority=1,
        batch_size=1,
        batch_interval="250ms",
        max_bandwidth="500kbit/s",
        start=42,
        partition_key="{client_id}-{sequence}",
    )
    export = parse_config(data, source="t").streams["telemetry"].exports[0]
    assert (export.priority, export.batch_size, export.batch_interval) == (1, 1, 0.25)
    assert export.max_bandwidth == 62_500.0
    assert export.start == 42
    assert export.options["partition_key"] == "{client_id}-{sequence}"


@pytest.mark.parametrize("start", ["oldest", "newest", 0])
def test_export_start(start: object) -> None:
    data = export_with(id="raw", type="kinesis", stream_name="s", start=start)
    assert parse_config(data, source="t").streams["telemetry"].exports[0].start == start


@pytest.mark.parametrize(
    ("keys", "options"),
    [
        ({"type": "firehose", "delivery_stream": "d"}, {"delivery_stream": "d", "delimiter": "\n"}),
        (
            {"type": "firehose", "delivery_stream": "d", "delimiter": ""},
            {"delivery_stream": "d", "delimiter": ""},
        ),
        (
            {"type": "s3", "bucket": "my-bucket"},
            {
                "bucket": "my-bucket",
                "key": "{stream}/{yyyy}/{mm}/{dd}/{HH}/{first_sequence}-{last_sequence}.jsonl.gz",
                "compression": "gzip",
                "max_object_size": 64 * 1024 * 1024,
                "max_object_age": 300.0,
            },
        ),
        (
            {
                "type": "s3",
                "bucket": "my-bucket",
                "compression": "none",
                "max_object_size": "5GiB",
                "max_object_age": "1h",
            },
            {
                "bucket": "my-bucket",
                "key": "{stream}/{yyyy}/{mm}/{dd}/{HH}/{first_sequence}-{last_sequence}.jsonl",
                "compression": "none",
                "max_object_size": 5 * 1024**3,
                "max_object_age": 3600.0,
            },
        ),
        ({"type": "iot_core"}, {"topic": "{topic}", "qos": 0}),
        (
            {"type": "iot_core", "topic": "gw/{client_id}/{stream}/{topic}", "qos": 1},
            {"topic": "gw/{client_id}/{stream}/{topic}", "qos": 1},
        ),
    ],
)
def test_export_type_options(keys: dict[str, object], options: dict[str, object]) -> None:
    export = parse_config(export_with(id="e", **keys), source="t").streams["telemetry"].exports[0]
    assert export.options == options


def test_templates_render_with_their_documented_fields() -> None:
    fields = {
        "stream": "t",
        "yyyy": "2024",
        "mm": "01",
        "dd": "02",
        "HH": "03",
        "first_sequence": 1,
        "last_sequence": 9,
    }
    export = (
        parse_config(export_with(id="e", type="s3", bucket="my-bucket"), source="t")
        .streams["telemetry"]
        .exports[0]
    )
    key = export.options["key"]
    assert isinstance(key, str)
    assert key.format(**fields) == "t/2024/01/02/03/1-9.jsonl.gz"


def test_data_dir_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_config({"data_dir": "state"}, source="/etc/headwater.yaml").data_dir == tmp_path / "state"
    assert parse_config({"data_dir": "/var/lib/hw"}, source="t").data_dir == Path("/var/lib/hw")


def test_aws_section() -> None:
    data = {
        "aws": {
            "region": "eu-central-1",
            "endpoint_url": "http://127.0.0.1:5000",
            "endpoints": {"s3": "https://s3.example.com", "iot-data": "https://iot.example.com"},
        }
    }
    aws = parse_config(data, source="t").aws
    assert aws.region == "eu-central-1"
    assert aws.endpoint_url == "http://127.0.0.1:5000"
    assert aws.endpoints == {"s3": "https://s3.example.com", "iot-data": "https://iot.example.com"}


def test_deploy_section() -> None:
    data = {
        "deploy": {
            "enabled": False,
            "pull": "always",
            "policy": {"allow_privileged": True, "allow_host_network": True, "allowed_bind_mounts": ["/srv"]},
        }
    }
    deploy = parse_config(data, source="t").deploy
    assert (deploy.enabled, deploy.pull) == (False, "always")
    assert deploy.policy.allow_privileged is True
    assert deploy.policy.allow_host_network is True
    assert deploy.policy.allowed_bind_mounts == ("/srv",)


def test_config_is_frozen() -> None:
    config = parse_config({}, source="t")
    with pytest.raises(AttributeError):
        config.topic_prefix = "x"  # type: ignore[misc]


# --- sizes, durations, bandwidths ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("512B", 512),
        ("1KiB", 1024),
        ("1 KiB", 1024),
        ("256MiB", 256 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1KB", 1000),
        ("1kB", 1000),
        ("64MB", 64_000_000),
        ("3GB", 3_000_000_000),
        ("1.5KiB", 1536),
        (".5MiB", 512 * 1024),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected a size such as 256MiB, got ''"),
        ("MiB", "expected a size such as 256MiB, got 'MiB'"),
        ("lots", "expected a size such as 256MiB, got 'lots'"),
        ("1 2MiB", "expected a size such as 256MiB, got '1 2MiB'"),
        ("12XB", "unknown size unit 'XB' in '12XB' (expected B, KiB, MiB, GiB, KB, MB, GB)"),
        ("1mib", "unknown size unit 'mib' in '1mib' (expected B, KiB, MiB, GiB, KB, MB, GB)"),
        ("-1", "must not be negative, got '-1'"),
        (-1, "must not be negative, got -1"),
        ("0.3KiB", "must be a whole number of bytes, got '0.3KiB'"),
        (True, "expected a size such as 256MiB, got true"),
    ],
)
def test_parse_size_errors(text: str | int, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        parse_size(text)
    assert str(info.value) == reason


_BINARY_UNITS = {
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(sorted(_BINARY_UNITS)),
    st.sampled_from(["", " "]),
)
def test_parse_size_scales_by_unit(number: int, unit: str, space: str) -> None:
    assert parse_size(f"{number}{space}{unit}") == number * _BINARY_UNITS[unit]


@given(st.integers(min_value=0, max_value=2**63))
def test_format_size_round_trips(size: int) -> None:
    text = format_size(size)
    assert parse_size(text) == size
    assert parse_size(str(size)) == size == parse_size(size)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1KiB"),
        (1536, "1536B"),
        (256 * 1024**2, "256MiB"),
        (5 * 1024**3, "5GiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0),
        (10, 10.0),
        (2.5, 2.5),
        ("30", 30.0),
        ("500ms", 0.5),
        ("1s", 1.0),
        ("1.5 s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("soon", "expected a duration such as 30s, got 'soon'"),
        ("1h30m", "expected a duration such as 30s, got '1h30m'"),
        ("3w", "unknown duration unit 'w' in '3w' (expected ms, s, m, h, d)"),
        ("1 min", "unknown duration unit 'min' in '1 min' (expected ms, s, m, h, d)"),
        ("-1s", "must not be negative, got '-1s'"),
        (-0.1, "must not be negative, got -0.1"),
        (float("inf"), "must be a finite duration, got inf"),
        (float("nan"), "must be a finite duration, got nan"),
        (False, "expected a duration such as 30s, got false"),
    ],
)
def test_parse_duration_errors(text: str | float, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        parse_duration(text)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("2Mbit/s", 250_000.0),
        ("500kbit/s", 62_500.0),
        ("500Kbit/s", 62_500.0),
        ("1Gbit/s", 125_000_000.0),
        ("800bit/s", 100.0),
        ("100KiB/s", 102_400.0),
        ("1MB/s", 1_000_000.0),
        ("1 MiB/s", 1024.0**2),
        ("10B/s", 10.0),
        ("1.5Mbit/s", 187_500.0),
    ],
)
def test_parse_bandwidth(text: str, rate: float) -> None:
    assert parse_bandwidth(text) == rate


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2Mbit", "expected a bandwidth such as 2Mbit/s, got '2Mbit'"),
        ("fast", "expected a bandwidth such as 2Mbit/s, got 'fast'"),
        ("1000", "expected a bandwidth such as 2Mbit/s, got '1000'"),
        (
            "2Mb/s",
            (
                "unknown bandwidth unit 'Mb/s' in '2Mb/s' "
                "(expected bit, kbit, Mbit, Gbit, B, KiB, MiB, GiB, KB, MB, GB, each with /s)"
            ),
        ),
        ("0kbit/s", "must be greater than zero, got '0kbit/s'"),
        ("-1MB/s", "must be greater than zero, got '-1MB/s'"),
    ],
)
def test_parse_bandwidth_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        parse_bandwidth(text)
    assert str(info.value) == reason


def test_config_error_is_a_value_error_with_path_and_reason() -> None:
    with pytest.raises(ValueError, match="must be at least 1KiB") as info:
        parse_config({"streams": {"telemetry": {"max_size": "1B"}}}, source="t")
    assert isinstance(info.value, ConfigError)
    assert info.value.path == "streams.telemetry.max_size"
    assert info.value.reason == "must be at least 1KiB"


# --- ACL: client ids and stream API rights -----------------------------------------------------


def test_acl_client_ids_and_stream_rights() -> None:
    acl = {
        "ops": {
            "publish": ["headwater/streams/#"],
            "client_ids": ["%u-*", "pump-??"],
            "streams": {"read": ["*"], "append": ["aggregates"], "admin": ["aggregates", "tmp-*"]},
        },
        "plain": {"publish": ["#"]},
        "partial": {"streams": {"admin": ["%u-*"], "read": []}, "client_ids": []},
        "nulls": {"streams": None, "client_ids": None},
    }
    parsed = parse_config({"broker": {"acl": acl}}, source="t").broker.acl
    assert parsed is not None
    ops = parsed["ops"]
    assert ops.client_ids == ("%u-*", "pump-??")
    assert (ops.stream_read, ops.stream_append, ops.stream_admin) == (
        ("*",),
        ("aggregates",),
        ("aggregates", "tmp-*"),
    )
    # Absent (or null) keys keep their defaults: no client id binding, read/append derived
    # from the topic rules (None), no admin right.
    for user in ("plain", "nulls"):
        entry = parsed[user]
        assert (entry.client_ids, entry.stream_read, entry.stream_append, entry.stream_admin) == (
            None,
            None,
            None,
            (),
        )
    partial = parsed["partial"]
    assert (partial.client_ids, partial.stream_read, partial.stream_append, partial.stream_admin) == (
        (),
        (),
        None,
        ("%u-*",),
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"streams": ["*"]}, "broker.acl.ops.streams: expected a mapping, got a list"),
        (
            {"streams": {"write": ["*"]}},
            "broker.acl.ops.streams.write: unknown key (expected one of: admin, append, read)",
        ),
        ({"streams": {"admin": "tmp-*"}}, "broker.acl.ops.streams.admin: expected a list, got 'tmp-*'"),
        ({"streams": {"admin": ["ok", ""]}}, "broker.acl.ops.streams.admin[1]: must not be empty"),
        ({"streams": {"read": [3]}}, "broker.acl.ops.streams.read[0]: expected a string, got 3"),
        (
            {"streams": {"admin": ["a/b"]}},
            (
                "broker.acl.ops.streams.admin[0]: invalid stream name pattern 'a/b' "
                "(expected letters, digits, _ . - and the wildcards * and ?, %u for the username)"
            ),
        ),
        (
            {"streams": {"append": ["%c-*"]}},
            "broker.acl.ops.streams.append[0]: '%' must be followed by 'u' (%u is the username), got '%c-*'",
        ),
        ({"client_ids": "pump-*"}, "broker.acl.ops.client_ids: expected a list, got 'pump-*'"),
        ({"client_ids": [""]}, "broker.acl.ops.client_ids[0]: must not be empty"),
        ({"client_ids": ["a\0b"]}, "broker.acl.ops.client_ids[0]: must not contain U+0000, got 'a\\x00b'"),
        (
            {"client_ids": ["ok", "100%"]},
            "broker.acl.ops.client_ids[1]: '%' must be followed by 'u' (%u is the username), got '100%'",
        ),
    ],
)
def test_acl_client_ids_and_stream_rights_errors(entry: dict[str, object], message: str) -> None:
    assert error_of({"broker": {"acl": {"ops": entry}}}) == message
