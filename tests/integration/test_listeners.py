"""TLS (with and without required client certificates) and WebSocket listeners, real clients."""

from __future__ import annotations

import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.broker import BrokerFactory
from tests.fixtures.mosquitto import mosquitto_pub, mosquitto_sub_once


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Headwater test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=device-1")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / "san.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return Certificates(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


def _tls_listener(certs: Certificates, *, require_client_cert: bool) -> str:
    return f"""
    broker:
      listeners:
        secure:
          bind: "127.0.0.1:0"
          tls:
            certfile: {certs.server_cert}
            keyfile: {certs.server_key}
            cafile: {certs.ca}
            require_client_cert: {str(require_client_cert).lower()}
    """


def test_tls_listener(headwater_factory: BrokerFactory, certificates: Certificates) -> None:
    broker = headwater_factory(_tls_listener(certificates, require_client_cert=False))
    assert broker.app.bound[0].url.startswith("mqtts://127.0.0.1:")
    tls = ["--cafile", str(certificates.ca)]
    topic = f"tls/{uuid.uuid4().hex}"
    mosquitto_pub(broker.port, topic, "over-tls", qos=1, retain=True, extra_args=tls)
    assert mosquitto_sub_once(broker.port, topic, extra_args=tls)[0].text == "over-tls"
    plain = mosquitto_pub(broker.port, topic, "plain", check=False, timeout=20)
    assert plain.returncode != 0  # a plain-text client gets nowhere on a TLS listener


def test_tls_listener_requiring_client_certificates(
    headwater_factory: BrokerFactory, certificates: Certificates
) -> None:
    broker = headwater_factory(_tls_listener(certificates, require_client_cert=True))
    server_only = ["--cafile", str(certificates.ca)]
    refused = mosquitto_pub(broker.port, "a/b", "x", extra_args=server_only, check=False)
    assert refused.returncode != 0
    with_cert = [*server_only, "--cert", str(certificates.client_cert), "--key", str(certificates.client_key)]
    mosquitto_pub(broker.port, "a/b", "with-cert", qos=1, retain=True, extra_args=with_cert)
    assert mosquitto_sub_once(broker.port, "a/b", extra_args=with_cert)[0].text == "with-cert"


def test_websocket_listener(headwater_factory: BrokerFactory) -> None:
    broker = headwater_factory('broker: {listeners: {web: {bind: "127.0.0.1:0", type: ws}}}')
    assert broker.app.bound[0].url.startswith("ws://")
    topic = f"ws/{uuid.uuid4().hex}"
    received: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, transport="websockets", protocol=mqtt.MQTTv311)
    client.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        received.append(message.payload)
        done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        client.publish(topic, b"over-websocket", qos=1).wait_for_publish(10)
        assert done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    assert received == [b"over-websocket"]
