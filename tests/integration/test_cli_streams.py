"""``headwater streams ls|describe|read|append`` as a user runs them: a subprocess against a real broker."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from headwater.clients import StreamClient
from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin
from tests.fixtures.broker import BrokerFactory, InProcessBroker, headwater_executable
from tests.fixtures.mosquitto import free_port, mosquitto_pub

STREAMS = """
streams:
  telemetry:
    topics: ["sensors/+/telemetry"]
  empty:
    topics: ["nothing/#"]
    persistence: memory
"""


@pytest.fixture
def hub(headwater_factory: BrokerFactory) -> InProcessBroker:
    streams = StreamsPlugin()
    return headwater_factory(STREAMS, plugins=[streams, StreamsApi(streams)])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "HEADWATER_URL"}
    return {**env, **extra}


def streams_cli(
    broker: InProcessBroker | None, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    url = ["--url", f"mqtt://127.0.0.1:{broker.port}"] if broker is not None else []
    result = subprocess.run(
        [headwater_executable(), "streams", *args, *url],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env=env or _env(),
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def test_append_then_read_json_lines(hub: InProcessBroker, tmp_path: Path) -> None:
    mosquitto_pub(hub.port, "sensors/d1/telemetry", '{"t": 20}', qos=1)
    appended = streams_cli(hub, "append", "telemetry", "-m", "from the cli")
    assert appended.returncode == 0, appended.stderr
    assert appended.stdout == "appended to telemetry at sequence 1\n"
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00")
    appended_json = streams_cli(hub, "append", "telemetry", "-f", str(binary), "--json")
    assert json.loads(appended_json.stdout) == {"stream": "telemetry", "sequence": 2}
    piped = streams_cli(
        hub, "append", "telemetry", "-f", "-", "--topic", "sensors/cli/telemetry", stdin=b"piped"
    )
    assert piped.returncode == 0, piped.stderr

    read = streams_cli(hub, "read", "telemetry", "--json")
    assert read.returncode == 0, read.stderr
    lines = [json.loads(line) for line in read.stdout.splitlines()]
    assert [line["sequence"] for line in lines] == [0, 1, 2, 3]
    assert [line["topic"] for line in lines] == [
        "sensors/d1/telemetry",
        "headwater/streams/telemetry/append",
        "headwater/streams/telemetry/append",
        "sensors/cli/telemetry",
    ]
    assert lines[0]["payload"] == '{"t": 20}'
    assert lines[1]["payload"] == "from the cli"
    assert lines[2]["payload_b64"] == "//4A"
    assert lines[3]["payload"] == "piped"
    for line in lines:
        assert {"sequence", "timestamp", "topic"} <= set(line)
        assert ("payload" in line) != ("payload_b64" in line)
        assert abs(line["timestamp"] - time.time() * 1000) < 60_000

    window = streams_cli(hub, "read", "telemetry", "--json", "--from", "1", "--max", "2")
    assert [json.loads(line)["sequence"] for line in window.stdout.splitlines()] == [1, 2]


def test_read_prints_a_readable_table(hub: InProcessBroker) -> None:
    mosquitto_pub(hub.port, "sensors/d1/telemetry", "two\nlines", qos=1)
    mosquitto_pub(hub.port, "sensors/d1/telemetry", b"\x80binary", qos=1)
    read = streams_cli(hub, "read", "telemetry")
    assert read.returncode == 0, read.stderr
    header, first, second = read.stdout.splitlines()
    assert header == "SEQ  TIME  TOPIC  PAYLOAD"
    sequence, timestamp, topic, payload = first.split("  ")
    assert (sequence, topic, payload) == ("0", "sensors/d1/telemetry", "two\\nlines")
    assert timestamp.endswith("Z")
    assert timestamp.startswith(time.strftime("%Y-", time.gmtime()))
    assert second.endswith("  base64:gGJpbmFyeQ==")
    assert streams_cli(hub, "read", "empty").stdout == ""


def test_ls_and_describe(hub: InProcessBroker) -> None:
    mosquitto_pub(hub.port, "sensors/d1/telemetry", "x" * 100, qos=1)
    listed = streams_cli(hub, "ls")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "PERSISTENCE", "RECORDS", "SIZE", "SEQUENCES", "EXPORTS"]
    assert [row.split()[:3] for row in rows] == [["empty", "memory", "0"], ["telemetry", "file", "1"]]
    assert rows[1].split()[4] == "0..0"

    listed_json = [json.loads(line) for line in streams_cli(hub, "ls", "--json").stdout.splitlines()]
    assert [stream["name"] for stream in listed_json] == ["empty", "telemetry"]

    described = streams_cli(hub, "describe", "telemetry", "--json")
    assert described.returncode == 0, described.stderr
    description = json.loads(described.stdout)
    assert description["storage"]["record_count"] == 1
    assert {"oldest_sequence", "newest_sequence", "total_bytes", "record_count"} <= set(
        description["storage"]
    )
    assert description["exports"] == []
    assert description == listed_json[1]

    text = streams_cli(hub, "describe", "telemetry").stdout
    assert "stream       telemetry\n" in text
    assert "records      1 (sequences 0..0)\n" in text
    assert "exports      none\n" in text


def test_follow_prints_new_records_until_ctrl_c(hub: InProcessBroker) -> None:
    mosquitto_pub(hub.port, "sensors/d1/telemetry", "old", qos=1)
    follow = subprocess.Popen(
        [
            headwater_executable(),
            "streams",
            "read",
            "telemetry",
            "--follow",
            "--json",
            "--url",
            f"mqtt://127.0.0.1:{hub.port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(PYTHONFAULTHANDLER="1"),  # SIGABRT dumps every thread's stack (diagnosis)
        # A shell starts background jobs (`scripts/test &`) with SIGINT ignored and children
        # inherit that: Python then installs no KeyboardInterrupt handler and SIGINT does
        # nothing. A user's terminal has the default disposition; so does this child.
        preexec_fn=_default_sigint,  # noqa: PLW1509 - nothing else forks meanwhile in this test
    )
    try:
        assert follow.stdout is not None
        assert json.loads(follow.stdout.readline())["payload"] == "old"
        mosquitto_pub(hub.port, "sensors/d2/telemetry", "new", qos=1)
        assert json.loads(follow.stdout.readline())["payload"] == "new"
        follow.send_signal(signal.SIGINT)
        try:
            follow.wait(15)
        except subprocess.TimeoutExpired:
            follow.send_signal(signal.SIGABRT)
            follow.wait(10)
            assert follow.stderr is not None
            stacks = follow.stderr.read().decode(errors="replace")
            pytest.fail(f"--follow did not exit after SIGINT:\n{stacks}")
        assert follow.returncode == 0
        assert follow.stderr is not None
        assert follow.stderr.read() == b""
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        for stream in (follow.stdout, follow.stderr):
            if stream is not None:
                stream.close()


def test_errors_have_one_line_and_an_exit_status(hub: InProcessBroker) -> None:
    missing = streams_cli(hub, "describe", "nope")
    assert missing.returncode == 3  # not found
    assert missing.stderr == "headwater: no stream named 'nope'\n"
    assert missing.stdout == ""
    assert streams_cli(hub, "read", "nope").returncode == 3

    port = free_port()
    refused = streams_cli(None, "ls", "--url", f"mqtt://127.0.0.1:{port}")
    assert refused.returncode == 1
    assert refused.stderr == f"headwater: cannot connect to mqtt://127.0.0.1:{port}: Connection refused\n"

    bad_url = streams_cli(None, "ls", "--url", "http://127.0.0.1")
    assert bad_url.returncode == 2
    assert bad_url.stderr.startswith("headwater: --url: unsupported URL scheme 'http'")

    bad_max = streams_cli(hub, "read", "telemetry", "--max", "0")
    assert bad_max.returncode == 2
    assert "--max: expected a whole number of at least 1" in bad_max.stderr

    invalid = streams_cli(hub, "append", "telemetry", "-m", "x", "--topic", "a/+")
    assert invalid.returncode == 2
    assert invalid.stderr.startswith("headwater: topic: ")


def test_the_url_comes_from_the_environment(hub: InProcessBroker) -> None:
    listed = streams_cli(None, "ls", "--json", env=_env(HEADWATER_URL=f"mqtt://127.0.0.1:{hub.port}"))
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 2


def test_passwords_never_show() -> None:
    port = free_port()
    refused = streams_cli(None, "ls", env=_env(HEADWATER_URL=f"mqtt://op:s3cret@127.0.0.1:{port}"))
    assert refused.returncode == 1
    assert refused.stderr == f"headwater: cannot connect to mqtt://op@127.0.0.1:{port}: Connection refused\n"


def test_no_stream_api_times_out_with_a_hint(headwater_factory: BrokerFactory) -> None:
    broker = headwater_factory()
    silent = streams_cli(broker, "ls", "--timeout", "0.5")
    assert silent.returncode == 1
    assert silent.stderr.startswith("headwater: no response to headwater/streams/_list within 0.5s")


@pytest.fixture
def tls_hub(headwater_factory: BrokerFactory, tmp_path: Path) -> tuple[InProcessBroker, Path]:
    """A broker whose only listener is TLS, with a self-signed certificate for 127.0.0.1."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    body = yaml.safe_load(STREAMS)
    body["broker"] = {
        "listeners": {"secure": {"bind": "127.0.0.1:0", "tls": {"certfile": str(cert), "keyfile": str(key)}}}
    }
    streams = StreamsPlugin()
    return headwater_factory(body, plugins=[streams, StreamsApi(streams)]), cert


def test_mqtts_urls_verify_the_server(tls_hub: tuple[InProcessBroker, Path]) -> None:
    broker, cert = tls_hub
    url = f"mqtts://127.0.0.1:{broker.port}"
    with StreamClient.connect(url, ssl_context=ssl.create_default_context(cafile=cert)) as client:
        assert client.append("telemetry", "over tls") == 0
    trusted = streams_cli(
        None, "read", "telemetry", "--json", "--url", url, env=_env(SSL_CERT_FILE=str(cert))
    )
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["payload"] == "over tls"
    untrusted = streams_cli(None, "ls", "--url", url)
    assert untrusted.returncode == 1
    assert untrusted.stderr.startswith(f"headwater: cannot connect to {url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
