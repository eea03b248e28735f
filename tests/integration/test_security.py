"""Authentication, ACLs and the retained-message leak, checked with the real mosquitto clients."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from headwater.broker.passwords import set_password
from tests.fixtures.broker import BrokerFactory, InProcessBroker
from tests.fixtures.mosquitto import MosquittoSub, mosquitto_pub, mosquitto_sub_once

REFUSED = 128  # SUBACK return code for a refused subscription
QUIET = 2  # seconds we listen to make sure nothing arrives


def _unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def _password_file(directory: Path, *users: str) -> Path:
    path = directory / "passwd"
    for user in users:
        set_password(path, user, f"{user}-secret")
    return path


def test_anonymous_is_refused_when_disabled(headwater_factory: BrokerFactory, tmp_path: Path) -> None:
    passwords = _password_file(tmp_path, "alice")
    broker = headwater_factory(f"broker: {{allow_anonymous: false, password_file: {passwords}}}")
    with pytest.raises(subprocess.CalledProcessError) as refused:
        mosquitto_sub_once(broker.port, "#", timeout=2)
    assert "not authorised" in refused.value.stderr.lower()
    refused_pub = mosquitto_pub(broker.port, "a/b", "x", check=False)
    assert refused_pub.returncode != 0


def test_a_listener_can_have_its_own_anonymous_rule(headwater_factory: BrokerFactory, tmp_path: Path) -> None:
    passwords = _password_file(tmp_path, "alice")
    broker = headwater_factory(
        f"""
        broker:
          allow_anonymous: false
          password_file: {passwords}
          listeners:
            default: {{bind: "127.0.0.1:0"}}
            health: {{bind: "127.0.0.1:0", allow_anonymous: true}}
        """
    )
    default, health = (bound.port for bound in broker.app.bound)
    assert mosquitto_pub(health, "a/b", "x", qos=1, check=False).returncode == 0
    refused = mosquitto_pub(default, "a/b", "x", qos=1, check=False)
    assert refused.returncode != 0
    assert b"not authorised" in refused.stderr.lower()


@pytest.fixture
def secured(headwater_factory: BrokerFactory, tmp_path: Path) -> InProcessBroker:
    passwords = tmp_path / "passwd"
    for user in ("alice", "bob", "admin"):
        set_password(passwords, user, f"{user}-secret")
    return headwater_factory(
        f"""
        broker:
          allow_anonymous: false
          password_file: {passwords}
          acl:
            alice: {{publish: ["sensors/#"], subscribe: ["sensors/#"]}}
            bob: {{publish: ["#"], subscribe: ["public/#"]}}
            admin: {{publish: ["#"], subscribe: ["#"]}}
        """
    )


def _creds(user: str) -> dict[str, str]:
    return {"username": user, "password": f"{user}-secret"}


def test_password_file_logins(secured: InProcessBroker) -> None:
    topic = _unique("sensors")
    with MosquittoSub(secured.port, topic, **_creds("alice")) as sub:
        mosquitto_pub(secured.port, topic, "hello", qos=1, **_creds("alice"))
        assert sub.wait_for(1)[0].text == "hello"
    wrong = mosquitto_pub(secured.port, topic, "x", username="alice", password="wrong", check=False)
    assert wrong.returncode != 0
    assert "not authorised" in wrong.stderr.decode().lower()
    unknown = mosquitto_pub(secured.port, topic, "x", username="mallory", password="x", check=False)
    assert unknown.returncode != 0


def test_acl_enforces_publish_and_subscribe(secured: InProcessBroker) -> None:
    allowed, denied = _unique("sensors"), _unique("other")
    with MosquittoSub(secured.port, "#", **_creds("admin")) as watcher:
        mosquitto_pub(secured.port, denied, "must-not-arrive", qos=1, **_creds("alice"))
        mosquitto_pub(secured.port, allowed, "arrives", qos=1, **_creds("alice"))
        messages = watcher.wait_for(predicate=lambda ms: any(m.topic == allowed for m in ms))
    assert [m.topic for m in messages] == [allowed]

    # (a second, allowed filter keeps mosquitto_sub running: it exits when all are refused)
    with MosquittoSub(secured.port, "sensors/#", "public/#", **_creds("bob")) as refused:
        assert refused.granted_qos == (REFUSED, 0)
        mosquitto_pub(secured.port, allowed, "not for bob", **_creds("alice"))
        with pytest.raises(TimeoutError):
            refused.wait_for(1, timeout=QUIET)


def test_retained_replay_respects_own_filters_and_acl(secured: InProcessBroker) -> None:
    """A retained message reaches only clients whose own filters match it and whose ACL allows it.

    amqtt on its own replays retained messages for *any* client's filters, unchecked.
    """
    secret = _unique("secret")
    mosquitto_pub(secured.port, secret, "classified", qos=1, retain=True, **_creds("admin"))
    # The admin holds a subscription that matches the secret while bob connects and subscribes.
    with (
        MosquittoSub(secured.port, "secret/#", **_creds("admin")) as admin,
        MosquittoSub(secured.port, "public/#", **_creds("bob")) as bob,
    ):
        assert admin.wait_for(1)[0].text == "classified"
        with pytest.raises(TimeoutError):
            bob.wait_for(1, timeout=QUIET)
    # Refused subscriptions get no retained messages either.
    with MosquittoSub(secured.port, "secret/#", "public/#", **_creds("bob")) as sneaky:
        assert sneaky.granted_qos == (REFUSED, 0)
        with pytest.raises(TimeoutError):
            sneaky.wait_for(1, timeout=QUIET)


def test_retained_replay_without_acl_only_matches_own_filters(headwater: InProcessBroker) -> None:
    mine, other = _unique("mine"), _unique("other")
    mosquitto_pub(headwater.port, mine, "for-me", qos=1, retain=True)
    mosquitto_pub(headwater.port, other, "not-for-me", qos=1, retain=True)
    # Another client's filter matches `other` while this one connects and subscribes.
    with MosquittoSub(headwater.port, other), MosquittoSub(headwater.port, mine) as sub:
        assert [m.text for m in sub.wait_for(1)] == ["for-me"]
        assert all(m.retain for m in sub.messages)
        with pytest.raises(TimeoutError):
            sub.wait_for(2, timeout=QUIET)


def test_clients_cannot_forge_headwater_status_topics(headwater: InProcessBroker) -> None:
    status = "headwater/deploy/web/status"
    with MosquittoSub(headwater.port, "headwater/#") as watcher:
        mosquitto_pub(headwater.port, status, '{"state": "running"}', qos=1, retain=True)
        mosquitto_pub(headwater.port, "headwater/deploy/web", "services: {}", qos=1)
        messages = watcher.wait_for(1)
    assert [m.topic for m in messages] == ["headwater/deploy/web"]
    with pytest.raises(TimeoutError):
        mosquitto_sub_once(headwater.port, status, timeout=QUIET)


def test_the_data_directory_is_private(headwater_factory: BrokerFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    headwater_factory({"data_dir": str(data_dir)})
    for folder in (data_dir, data_dir / "db"):
        assert folder.stat().st_mode & 0o077 == 0, oct(folder.stat().st_mode)
