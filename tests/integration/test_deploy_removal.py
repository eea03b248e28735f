"""Removing apps, end to end: the ``headwater`` command against a real ``headwater run``.

A removal ends with ``removed`` on the app's status topic, then that status is cleared, so that
``headwater deploy status`` stops listing the app; an app refused for its name can be removed
like any other (its retained message and its ``failed`` status both go).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from headwater.core.store import Database
from tests.fixtures.broker import HeadwaterProcess, headwater_executable
from tests.fixtures.mosquitto import MosquittoSub, MqttMessage, mosquitto_pub, mosquitto_sub_once

pytestmark = pytest.mark.docker

StartProcess = Callable[..., HeadwaterProcess]

WAIT = 90.0  # generous: a deployment on a loaded 2-core machine
QUIET = 1.0  # retained messages arrive right after the SUBACK; none within this: there are none
CONFIG = {"deploy": {"status_interval": "2s"}}


def headwater(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [headwater_executable(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def url(process: HeadwaterProcess) -> str:
    return f"mqtt://127.0.0.1:{process.port}"


def listed_apps(process: HeadwaterProcess) -> set[str]:
    """The apps ``headwater deploy status --json`` lists."""
    result = headwater("deploy", "status", "--json", "--url", url(process))
    assert result.returncode == 0, result.stderr
    return {document["app"] for line in result.stdout.splitlines() if "app" in (document := json.loads(line))}


def assert_no_retained(process: HeadwaterProcess, topic: str) -> None:
    with pytest.raises(TimeoutError):
        mosquitto_sub_once(process.port, topic, timeout=QUIET)


def states(messages: list[MqttMessage]) -> list[str | None]:
    """Each status's state; None for a cleared status (an empty message)."""
    return [json.loads(message.payload)["state"] if message.payload else None for message in messages]


def web_compose() -> str:
    return """
services:
  web:
    image: headwater-test/busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 8080 -h /www"]
    init: true
"""


@pytest.mark.parametrize("name", ["Bad_Name", "two/levels"])
def test_an_app_refused_for_its_name_can_be_removed(headwater_process: StartProcess, name: str) -> None:
    process = headwater_process(CONFIG)
    topic = f"headwater/deploy/{name}"
    mosquitto_pub(process.port, topic, web_compose(), qos=1, retain=True)
    [refused] = mosquitto_sub_once(process.port, f"{topic}/status", timeout=WAIT)
    assert json.loads(refused.payload)["state"] == "failed"
    shown = headwater("deploy", "status", name, "--url", url(process))
    assert shown.returncode == 0, shown.stderr
    assert f"{name}  failed" in shown.stdout

    down = headwater("deploy", "down", name, "--url", url(process))
    assert down.returncode == 0, down.stderr
    assert f"  {name}  removed" in down.stdout

    assert_no_retained(process, topic)  # the desired state is gone
    assert_no_retained(process, f"{topic}/status")  # and so is the refusal's status
    assert headwater("deploy", "status", name, "--url", url(process)).returncode == 3
    process.restart()  # kill -9, start: nothing comes back
    assert_no_retained(process, f"{topic}/status")
    assert headwater("deploy", "status", name, "--url", url(process)).returncode == 3


def test_a_removed_app_is_no_longer_listed(
    headwater_process: StartProcess,
    busybox_image: str,
    deployed_projects: Callable[[str], str],
    tmp_path: Path,
) -> None:
    del busybox_image
    process = headwater_process(CONFIG)
    app = f"t{uuid.uuid4().hex[:10]}"
    deployed_projects(app)
    compose = tmp_path / "compose.yml"
    compose.write_text(web_compose())
    up = headwater("deploy", "up", app, "-f", str(compose), "--url", url(process))
    assert up.returncode == 0, up.stdout + up.stderr
    assert app in listed_apps(process)

    status_topic = f"headwater/deploy/{app}/status"
    with MosquittoSub(process.port, status_topic, qos=1) as watch:
        watch.wait_for(1, timeout=WAIT)  # the retained `running`
        down = headwater("deploy", "down", app, "--url", url(process))
        assert down.returncode == 0, down.stderr
        watch.wait_for(predicate=lambda messages: None in states(messages), timeout=WAIT)
    seen = states(watch.messages)
    assert seen[0] == "running", seen
    assert [state for state in seen if state != "running"] == ["removing", "removed", None], seen

    assert app not in listed_apps(process)
    gone = headwater("deploy", "status", app, "--url", url(process))
    assert gone.returncode == 3
    assert_no_retained(process, status_topic)
    process.restart()
    assert app not in listed_apps(process)


def test_statuses_left_behind_are_cleared_at_start(headwater_process: StartProcess, tmp_path: Path) -> None:
    """Statuses without a desired state that say ``removed``, or name an invalid app, are cleared.

    Such a ``removed`` comes from a process killed before it cleared it, or an older Headwater.
    """
    process = headwater_process(CONFIG)
    process.kill()

    def status(app: str, state: str) -> bytes:
        document: dict[str, Any] = {"app": app, "state": state, "revision": None, "services": []}
        return json.dumps(document).encode()

    left = {
        "gone": status("gone", "removed"),
        "Bad_Name": status("Bad_Name", "failed"),
        "stuck": status("stuck", "failed"),  # a removal that failed: the operator must see it
    }
    database = Database.open(tmp_path / "data")
    try:
        for app, payload in left.items():
            database.retained.put(f"headwater/deploy/{app}/status", payload, 1)
    finally:
        database.close()

    process.start()
    assert listed_apps(process) == {"stuck"}
    assert_no_retained(process, "headwater/deploy/gone/status")
    assert_no_retained(process, "headwater/deploy/Bad_Name/status")
