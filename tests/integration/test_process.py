"""``headwater run`` as a real process: durable retained messages, signals, start-up errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.broker import HeadwaterProcess, headwater_executable, write_config
from tests.fixtures.mosquitto import mosquitto_pub, mosquitto_sub_once

QUIET = 2


def test_retained_messages_survive_kill_9(headwater_process: type[HeadwaterProcess]) -> None:
    process = headwater_process()
    base = f"gw/{uuid.uuid4().hex[:8]}"
    for index in range(20):
        # mosquitto_pub -q 1 returns only after the PUBACK: each of these was acknowledged.
        mosquitto_pub(process.port, f"{base}/{index}", f"value-{index}", qos=1, retain=True)
    mosquitto_pub(process.port, f"{base}/0", "updated", qos=1, retain=True)
    mosquitto_pub(process.port, f"{base}/1", b"", qos=1, retain=True)  # empty retained = delete
    process.kill()

    process.start()
    messages = mosquitto_sub_once(process.port, f"{base}/#", count=19, timeout=10)
    got = {m.topic: m.text for m in messages}
    expected = {f"{base}/{i}": f"value-{i}" for i in range(2, 20)} | {f"{base}/0": "updated"}
    assert got == expected
    assert all(m.retain for m in messages)
    with pytest.raises(TimeoutError):
        mosquitto_sub_once(process.port, f"{base}/1", timeout=QUIET)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(headwater_process: type[HeadwaterProcess], signum: int) -> None:
    process = headwater_process()
    mosquitto_pub(process.port, "a/b", "x", qos=1, retain=True)
    process.signal(signum)
    assert process.wait() == 0
    log = process.log_text()
    assert "Headwater stopped" in log
    assert "Traceback" not in log
    process.start()  # the database was closed cleanly: it reopens, and the retained message is there
    assert mosquitto_sub_once(process.port, "a/b")[0].text == "x"


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [headwater_executable(), *args], capture_output=True, text=True, input=stdin, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("broker: {listners: {}}", "broker.listners: unknown key"),
        ("broker: {allow_anonymous: 'yes'}", "broker.allow_anonymous: expected a boolean"),
        ("streams: {t: {topics: ['a/#'], max_size: 10B}}", "streams.t.max_size: must be at least 1KiB"),
        ("streams: {t: {topics: ['a/#/b']}}", "streams.t.topics[0]:"),
        (
            "broker: {listeners: {net: {bind: '0.0.0.0:0'}}}",
            "broker.listeners.net: nobody can log in to listener 'net'",
        ),
    ],
)
@pytest.mark.parametrize("check_only", [False, True], ids=["run", "check-config"])
def test_bad_config_is_one_line_exit_2(tmp_path: Path, body: str, message: str, check_only: bool) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(body + "\n")
    result = _run("run", "-c", str(config), *(["--check-config"] if check_only else []))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, {"broker": {"listeners": {"default": {"bind": f"127.0.0.1:{port}"}}}})
        result = _run("run", "-c", str(config))
    assert result.returncode == 1
    assert f"broker.listeners.default: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_logs(headwater_process: type[HeadwaterProcess]) -> None:
    process = headwater_process("", "--log-format", "json")
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    entries = [json.loads(line) for line in process.log_text().splitlines() if line.strip()]
    assert any(entry["message"].startswith("listening on mqtt://127.0.0.1:") for entry in entries)
    assert {"time", "level", "logger", "message"} <= set(entries[0])


def test_passwd_command_then_login(tmp_path: Path, headwater_process: type[HeadwaterProcess]) -> None:
    passwords = tmp_path / "passwd"
    created = _run("passwd", str(passwords), "alice", stdin="s3cret\n")
    assert created.returncode == 0, created.stderr
    assert passwords.stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in passwords.read_text()
    assert passwords.read_text().startswith("alice:$argon2id$")

    process = headwater_process({"broker": {"allow_anonymous": False, "password_file": str(passwords)}})
    mosquitto_pub(process.port, "a/b", "hi", qos=1, username="alice", password="s3cret")
    assert (
        mosquitto_pub(process.port, "a/b", "hi", username="alice", password="nope", check=False).returncode
        != 0
    )

    replaced = _run("passwd", str(passwords), "alice", stdin="n3w\n")
    assert replaced.returncode == 0
    # the running broker notices the changed file: no restart needed
    mosquitto_pub(process.port, "a/b", "hi", qos=1, username="alice", password="n3w")
    assert _run("passwd", "-D", str(passwords), "alice").returncode == 0
    assert (
        mosquitto_pub(process.port, "a/b", "hi", username="alice", password="n3w", check=False).returncode
        != 0
    )


def test_client_commands_take_the_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_URL", "mqtt://op:pw@127.0.0.1:1999")  # nothing listens there
    result = _run("deploy", "status")
    assert result.returncode == 1
    assert "cannot connect to mqtt://op@127.0.0.1:1999" in result.stderr  # password not shown
    assert "pw" not in result.stderr.replace("op@", "")
    bad = _run("deploy", "status", "--url", "http://x")
    assert bad.returncode == 2
    assert "--url: unsupported URL scheme 'http'" in bad.stderr


def test_help_lists_every_command() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in ("run", "passwd", "streams", "deploy"):
        assert command in result.stdout
