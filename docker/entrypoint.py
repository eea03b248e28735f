#!/opt/headwater/bin/python3
"""The container's entrypoint: check the data folder, tell the healthcheck where to ask, exec.

Owns what a container adds to ``headwater run``: a writable-data check with a fix in one line,
and ``/run/headwater/healthcheck.json`` (URL without credentials, topic prefix), which tells
``headwater-healthcheck`` (docker/healthcheck.py) which listener to ask. It must never change
anything when the command is not ``headwater run`` (``headwater passwd ...``, ``headwater
streams ...``, a shell: exec'd unchanged), and never write a secret anywhere.

Which listener: a plain TCP loopback listener that lets anonymous clients in (the image's
config has ``health`` on 127.0.0.1:1884 for this), else the first plain TCP listener with a fixed
port, anonymously — with a notice, since a network listener normally wants a login; then
``$HEADWATER_HEALTHCHECK_URL`` is the way to give the healthcheck a user of yours.

Arguments starting with ``-`` are options of the default command:
``docker run headwater --log-level DEBUG`` runs
``headwater run -c /etc/headwater/headwater.yaml --log-level DEBUG``.

Nothing here raises past ``main``: a problem becomes a one-line notice on stderr and Headwater
starts anyway, so that it reports config and storage errors itself, in its own words.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from headwater.core.config import ConfigError, HeadwaterConfig, ListenerConfig, load_config

DEFAULT_CONFIG = "/etc/headwater/headwater.yaml"
DEFAULT_COMMAND = ("headwater", "run", "-c", DEFAULT_CONFIG)
HEALTHCHECK_STATE = Path("/run/headwater/healthcheck.json")
ENV_HEALTHCHECK_URL = "HEADWATER_HEALTHCHECK_URL"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - matched, not bound


def notice(message: str) -> None:
    """One line on stderr, in the container's log next to Headwater's own."""
    print(f"headwater-entrypoint: {message}", file=sys.stderr, flush=True)  # noqa: T201 - the log


def command_line(arguments: list[str]) -> list[str]:
    """The command to exec: the default one, with ``arguments`` appended when they are options."""
    if not arguments:
        return list(DEFAULT_COMMAND)
    if arguments[0].startswith("-"):
        return [*DEFAULT_COMMAND, *arguments]
    return arguments


def run_options(command: list[str]) -> argparse.Namespace | None:
    """The ``-c`` / ``--data-dir`` of a ``headwater run`` command; None for any other command."""
    if len(command) < 2 or Path(command[0]).name != "headwater" or command[1] != "run":  # noqa: PLR2004
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config")
    parser.add_argument("--data-dir")
    parser.add_argument("--check-config", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    options, _ = parser.parse_known_args(command[2:])
    if options.check_config or options.help:
        return None
    return options


def healthcheck_listener(config: HeadwaterConfig) -> tuple[ListenerConfig | None, bool]:
    """The listener the healthcheck uses, and whether it lets anonymous clients in.

    First choice: a plain TCP loopback listener with anonymous access; else the first plain TCP
    listener with a fixed port.
    """
    plain = [
        listener
        for listener in config.broker.listeners
        if listener.type == "tcp" and listener.tls is None and listener.port != 0
    ]

    def anonymous(listener: ListenerConfig) -> bool:
        return config.broker.allow_anonymous if listener.allow_anonymous is None else listener.allow_anonymous

    for listener in plain:
        if listener.is_loopback and anonymous(listener):
            return listener, True
    if plain:
        return plain[0], anonymous(plain[0])
    return None, False


def healthcheck_url(listener: ListenerConfig) -> str:
    """``mqtt://host:port`` reaching ``listener`` from inside the container (no credentials)."""
    host = "127.0.0.1" if listener.host in _WILDCARD_HOSTS else listener.host
    if ":" in host:
        host = f"[{host}]"
    return f"mqtt://{host}:{listener.port}"


def data_dir_writable(data_dir: Path) -> bool:
    """Tell whether this user can write ``data_dir``; if not, say how to fix it."""
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if os.access(existing, os.W_OK | os.X_OK):
        return True
    notice(
        f"{existing} is not writable by uid {os.getuid()}: Headwater can't store anything there. "
        f"Use a named volume, or chown -R {os.getuid()}:{os.getgid()} the host folder."
    )
    return False


def write_state(state: dict[str, object]) -> None:
    """Replace the healthcheck's state file atomically, readable by this user only."""
    directory = HEALTHCHECK_STATE.parent
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".healthcheck.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            json.dump(state, file)
        Path(temporary).replace(HEALTHCHECK_STATE)
    except OSError as exc:
        notice(
            f"cannot write {HEALTHCHECK_STATE} ({exc.strerror or exc}): the healthcheck will fail. "
            f"With --read-only, add --tmpfs {directory}:uid={os.getuid()},gid={os.getgid()}."
        )


def prepare(options: argparse.Namespace) -> None:
    """Check the data folder, tell the healthcheck where to ask (see the module docstring)."""
    try:
        config = load_config(Path(options.config) if options.config else None)
    except ConfigError:
        return  # `headwater run` prints the one-line error itself
    if not data_dir_writable(Path(options.data_dir).absolute() if options.data_dir else config.data_dir):
        return  # Headwater can't start; nothing else is worth a message
    with contextlib.suppress(OSError):  # a stale file must not outlive a changed config
        HEALTHCHECK_STATE.unlink(missing_ok=True)
    listener, anonymous = healthcheck_listener(config)
    if listener is None:
        notice(
            "no plain TCP listener with a fixed port: the healthcheck can't reach the broker "
            f"unless {ENV_HEALTHCHECK_URL} is set"
        )
        return
    if not anonymous and not os.environ.get(ENV_HEALTHCHECK_URL):
        notice(
            f"listener {listener.name} refuses anonymous clients: the healthcheck will fail. Add a "
            'loopback listener for it (health: {bind: "127.0.0.1:1884", allow_anonymous: true}) '
            f"or set {ENV_HEALTHCHECK_URL}=mqtt://USER:PASSWORD@127.0.0.1:PORT"
        )
    write_state({"url": healthcheck_url(listener), "topic_prefix": config.topic_prefix})


def main() -> NoReturn:
    """Prepare (for ``headwater run`` only), then replace this process with the command."""
    command = command_line(sys.argv[1:])
    options = run_options(command)
    if options is not None:
        prepare(options)
    try:
        os.execvp(command[0], command)  # noqa: S606 - the container's command, as given
    except OSError as exc:
        notice(f"cannot run {command[0]}: {exc.strerror or exc}")
        raise SystemExit(127) from exc


if __name__ == "__main__":
    main()
