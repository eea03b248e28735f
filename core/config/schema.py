"""The config schema: the frozen dataclasses a validated ``headwater.yaml`` becomes.

Owns: one dataclass per section (and per listener, ACL entry, stream, export and registry), each
field's type, default and meaning. The section validators build them; everything else in the hub
only reads them. It must never validate, parse or read anything: a key's rules and its error
messages live in the validator of its section.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS for one listener; the files exist (checked at load), paths are absolute."""

    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One MQTT listener (``broker.listeners.<name>``)."""

    name: str
    host: str  # "127.0.0.1", "::1", "0.0.0.0", "::" (IPv6 without brackets)
    port: int  # 0 = an ephemeral port chosen by the OS
    type: Literal["tcp", "ws"] = "tcp"
    tls: TLSConfig | None = None
    # This listener's own anonymous rule; None: broker.allow_anonymous applies.
    allow_anonymous: bool | None = None

    @property
    def is_loopback(self) -> bool:
        """True when the listener only accepts connections from this machine.

        That is ``localhost``, any address in 127.0.0.0/8, ``::1`` (or an IPv4-mapped IPv6
        loopback address). Other host names are not resolved and count as not loopback.
        """
        if self.host.lower() == "localhost":
            return True
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback


@dataclass(frozen=True, slots=True)
class TopicACL:
    """One user's ACL entry (``broker.acl.<user>``).

    ``publish`` / ``subscribe``: the topic filters the user may publish to and subscribe to.
    ``client_ids``: name patterns (``*``, ``?``, ``%u``) one of which the client id must match;
    ``None`` (the key absent) binds no client id. ``stream_read``, ``stream_append`` and
    ``stream_admin`` (YAML: ``streams: {read, append, admin}``): stream name patterns granting
    those stream API rights; ``None`` (``read`` / ``append`` absent) derives the right from the
    topic rules, ``admin`` defaults to none. headwater.core.stream_rights has the rules.
    ``deny_publish`` / ``deny_subscribe`` (YAML: ``deny: {publish, subscribe}``): topic
    filters taken out of what ``publish`` / ``subscribe`` allow; a deny wins over an allow.
    """

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    client_ids: tuple[str, ...] | None = None
    stream_read: tuple[str, ...] | None = None
    stream_append: tuple[str, ...] | None = None
    stream_admin: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """``broker.limits``: what one client, and all of them together, may cost the broker.

    Every limit protects the gateway from a client that is broken or hostile; the defaults are
    meant to be safe on a small gateway and are documented in docs/security.md.
    """

    # Seconds a new connection may take to send a complete CONNECT before it is closed.
    connect_timeout: float = 10.0
    # Bytes of one MQTT packet (fixed header included); a larger one closes the connection
    # before its body is read.
    max_packet_size: int = 8 * 1024 * 1024
    # Open client connections at once (every listener together); more are closed at once.
    max_connections: int = 10_000
    # QoS 1/2 messages kept for one offline persistent session; beyond that new ones are
    # dropped and counted.
    max_queued_messages: int = 1000
    # QoS 1/2 deliveries waiting for a connected client's in-flight window (a subscriber slower
    # than its publishers); beyond that new ones are dropped and counted.
    max_pending_deliveries: int = 10_000
    # QoS 1/2 messages in flight per client and direction: unacknowledged deliveries to it, and
    # its publishes not yet acknowledged (the broker stops reading from it until one is).
    max_inflight_messages: int = 20


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The ``broker`` section: listeners, authentication, the ACL and the limits."""

    listeners: tuple[ListenerConfig, ...]
    allow_anonymous: bool
    # True when the YAML wrote allow_anonymous out (needed to open anonymous non-loopback access).
    allow_anonymous_explicit: bool = False
    password_file: Path | None = None
    # None = no ACL at all (every authenticated client may do anything).
    # Key "anonymous" applies to clients without a username.
    acl: Mapping[str, TopicACL] | None = None
    limits: BrokerLimits = field(default_factory=BrokerLimits)


@dataclass(frozen=True, slots=True)
class AwsConfig:
    """The ``aws`` section; ``endpoints`` keys are a subset of the supported services."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    endpoints: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """One export of a stream.

    ``options`` holds the type's own keys, validated and with every default filled in:

    ========  ===========================================================================
    type      options (Python types)
    ========  ===========================================================================
    kinesis   ``stream_name: str``, ``partition_key: str`` (template)
    firehose  ``delivery_stream: str``, ``delimiter: str``
    s3        ``bucket: str``, ``key: str`` (template), ``compression: "gzip" | "none"``,
              ``max_object_size: int`` (bytes), ``max_object_age: float`` (seconds)
    iot_core  ``topic: str`` (template), ``qos: int`` (0 or 1)
    ========  ===========================================================================

    Templates only contain the placeholders listed in the table above, without format specs, so
    ``template.format(**fields)`` with those fields always succeeds.
    """

    id: str
    type: Literal["kinesis", "firehose", "s3", "iot_core"]
    priority: int = 5
    batch_size: int = 500
    batch_interval: float = 1.0  # seconds
    max_bandwidth: float | None = None  # bytes per second
    start: Literal["oldest", "newest"] | int = "oldest"
    # Type-specific keys, validated and defaulted per type (docs/uploads.md lists them).
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One stream (``streams.<name>``): which topics feed it, storage, retention, exports."""

    name: str
    topics: tuple[str, ...]
    persistence: Literal["file", "memory"] = "file"
    max_size: int = 256 * 1024 * 1024  # bytes
    strategy_on_full: Literal["overwrite_oldest", "reject_new"] = "overwrite_oldest"
    ttl: float | None = None  # seconds
    flush_on_write: bool = False
    drop_exported: bool = False
    exports: tuple[ExportConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class UploadsConfig:
    """The ``uploads`` section: limits shared by every export."""

    max_bandwidth: float | None = None  # bytes per second, shared by every export
    max_backoff: float = 300.0  # seconds: the longest wait between retries (and of a blocked export)
    priority_aging: float = 10.0  # seconds of waiting that raise an export's priority by one level


@dataclass(frozen=True, slots=True)
class DeployPolicy:
    """What a deployed compose file may ask for (docs/deploy.md has the full rule table).

    The policy is an allow-list (``headwater.plugins.deploy.compose_keys``): every compose key
    is allowed, checked, allowed only with one of these switches, or refused. Each switch
    allows one family of keys:

    * ``allow_privileged``: ``privileged`` (hooks too), ``cap_add``, ``security_opt``, GPUs,
      other runtimes, device cgroup rules, the host's PID / IPC / UTS / user / cgroup namespaces;
    * ``allow_host_network``: ``network_mode: host``, network drivers other than bridge, driver
      options, chosen subnets (``ipam``);
    * ``allow_external_volumes``: volumes that are not the app's own (``external``, an explicit
      ``name``, other drivers, nfs/cifs/disk mounts, ``volumes_from: container:...``);
    * ``allow_external_networks``: networks that are not the app's own (``external``, ``name``);
    * ``allow_kernel_tuning``: ``sysctls``, ``oom_kill_disable``, ``oom_score_adj`` below 0,
      real-time CPU settings, ``ulimits`` memlock / rtprio / rttime / nice;
    * ``allowed_bind_mounts``: host paths (and everything below them) that may be bind-mounted
      or passed as ``devices`` — never the Docker engine's own paths, whatever is listed.
    """

    allow_privileged: bool = False
    allow_host_network: bool = False
    allow_external_volumes: bool = False
    allow_external_networks: bool = False
    allow_kernel_tuning: bool = False
    allowed_bind_mounts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistryCredential:
    """Named registry credentials (``deploy.registries.<name>``): a Secrets Manager reference.

    The secret's ``SecretString`` is JSON ``{"username": ..., "password": ...}``; it is fetched
    for each deployment that names it in ``registry_auth`` and never stored by Headwater.
    """

    name: str
    server: str  # registry host[:port], as it appears in image references (docker.io for Docker Hub)
    secret_id: str  # Secrets Manager secret name or ARN


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """The ``deploy`` section."""

    enabled: bool = True
    pull: Literal["always", "missing", "never"] = "missing"
    policy: DeployPolicy = field(default_factory=DeployPolicy)
    status_interval: float = 30.0  # seconds between refreshes of every app's status from Docker
    timeout: float = 600.0  # seconds one docker compose run may take before it is killed
    # None: the DOCKER_HOST environment variable, else unix:///var/run/docker.sock.
    docker_host: str | None = None
    # None: `docker compose` if the docker CLI has the plugin, else a v2 `docker-compose`.
    compose_command: tuple[str, ...] | None = None
    max_compose_size: int = 256 * 1024  # bytes of one deploy message or S3 compose object
    # Bytes of data memory (RLIMIT_DATA) each docker compose process may use before it fails.
    compose_memory_limit: int = 512 * 1024 * 1024
    registries: Mapping[str, RegistryCredential] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeadwaterConfig:
    """The whole validated config; built by :func:`load_config` or :func:`parse_config`."""

    data_dir: Path
    topic_prefix: str
    broker: BrokerSettings
    aws: AwsConfig = field(default_factory=AwsConfig)
    streams: Mapping[str, StreamConfig] = field(default_factory=dict)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    # Where the config came from ("<embedded default>" or a file path), for logs.
    source: str = "<embedded default>"
