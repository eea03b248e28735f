"""What people install: the client alone on a device, and the project editable for development.

Each test builds a fresh virtual environment (``python -m venv``, no system site-packages) and
installs from the checkout with pip, the way the README says. pip fetches what it needs from the
package index (build requirements, dependencies); its cache keeps repeated runs short.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from headwater.plugins.streams.api import StreamsApi
from headwater.plugins.streams.plugin import StreamsPlugin
from tests.fixtures.broker import BrokerFactory, write_config
from tests.fixtures.mosquitto import mosquitto_pub

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on mqtt://[0-9.]+:(?P<port>\d+)")


def _venv(path: Path) -> Path:
    """A fresh virtual environment at ``path``; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def _pip_install(python: Path, *args: str) -> None:
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_client_installs_alone_and_talks_to_headwater(
    headwater_factory: BrokerFactory, tmp_path: Path
) -> None:
    python = _venv(tmp_path / "device")
    _pip_install(python, "./clients")

    # Only the client distribution and paho-mqtt: no hub, no hub dependency.
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    installed = {line.split("==")[0].lower() for line in listing.split()}
    assert {"headwater-client", "paho-mqtt"} <= installed
    assert not installed & {"headwater", "amqtt", "rocksdict", "pyyaml", "argon2-cffi", "boto3", "docker"}

    streams = StreamsPlugin()
    hub = headwater_factory(
        "streams: {telemetry: {topics: ['device/+/t']}}", plugins=[streams, StreamsApi(streams)]
    )
    mosquitto_pub(hub.port, "device/1/t", "21.5", qos=1)
    script = textwrap.dedent(
        f"""
        import sys
        import headwater.clients
        assert not {{"amqtt", "rocksdict", "yaml"}} & set(sys.modules), sorted(sys.modules)
        from headwater.clients import StreamClient
        with StreamClient.connect("mqtt://127.0.0.1:{hub.port}", timeout=20) as client:
            description = client.describe("telemetry")
        print(description.name, description.storage.record_count)
        """
    )
    # From tmp_path: the checkout must not be importable by accident.
    result = subprocess.run(
        [str(python), "-c", script], capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["telemetry", "1"]


def test_an_editable_install_runs(tmp_path: Path) -> None:
    # A full editable install (dependencies from the index), not --no-deps over the test
    # venv: the point is what `pip install -e .` gives a developer on a clean machine.
    python = _venv(tmp_path / "dev")
    _pip_install(python, "-e", ".")
    headwater = str(python.with_name("headwater"))

    # The embedded default config is package data, read through the editable finder.
    checked = subprocess.run(
        [headwater, "run", "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
    assert "<embedded default>: OK" in checked.stdout + checked.stderr

    config = write_config(tmp_path, "")
    log_path = tmp_path / "headwater.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [headwater, "run", "-c", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 60
        while not _LISTENING.search(log_path.read_text(errors="replace")):
            assert process.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
