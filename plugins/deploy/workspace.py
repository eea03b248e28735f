"""``DeployWorkspace``: the deploy plugin's files under ``<data_dir>/deploy/``.

Layout (the only module that builds these paths)::

    <data_dir>/deploy/                       0700
        instance                             0600  this Headwater's id (random, made once)
        refused.json                         0600  refused revisions, so that they are not retried
        app-<app>/                           0700, one per app Headwater has files for
            compose.yaml                     0600  the compose file as received (or fetched)
            headwater.labels.yaml            0600  Headwater's labels on every service
            state.json                       0600  what docker compose last brought up

``state.json`` is ``{"version": 1, "revision", "deployed_at" (epoch seconds), "services"}``.

Every service gets two labels: ``io.headwater.app`` (the app) and ``io.headwater.instance``
(the id in ``instance``). Reconcile only ever removes containers that carry this Headwater's
instance id, so two Headwaters sharing one Docker engine (or a test suite) never remove each
other's apps. A new ``data_dir`` is a new instance: containers of the old one are left alone.

Invariants:

* An app's folder name is ``app-`` + a name that :func:`~headwater.plugins.deploy.model.check_app_name`
  accepted: no name from a topic is ever used as a path as it came.
* ``compose.yaml`` is written only after the file passed the checks that need no Docker; it may
  hold a refused file (the policy check needs compose's resolution of it), never credentials:
  registry credentials live in a temporary ``DOCKER_CONFIG`` outside ``data_dir``, the
  envelope's ``env`` only in docker compose's environment.
* ``state.json`` is replaced atomically (write, rename) after a successful ``up``; it is how a
  restarted Headwater knows that a revision already runs. Losing it costs one ``up`` that
  changes nothing (compose recreates only containers whose configuration changed).
* The folder is deleted after a successful ``down`` (and at start-up for apps that have neither
  a desired state nor containers).
* ``refused.json`` is ``{"version": 1, "apps": {app: {"revision", "config", "error"}}}``: the
  revision of each app that was refused (with the fingerprint of the deploy config that refused
  it and the one-line error, which never holds a credential). It lives outside the app folders,
  which a refused new app does not keep, and is replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from headwater.plugins.deploy.engine import APP_LABEL, INSTANCE_LABEL
from headwater.plugins.deploy.model import check_app_name
from headwater.wire.deploy import app_name_problem

__all__ = ["AppState", "DeployWorkspace", "Refusal"]

_DIRECTORY_PREFIX: Final = "app-"
_COMPOSE_FILE: Final = "compose.yaml"
_LABELS_FILE: Final = "headwater.labels.yaml"
_STATE_FILE: Final = "state.json"
_REFUSED_FILE: Final = "refused.json"
_INSTANCE_FILE: Final = "instance"
_INSTANCE_DIGITS: Final = 16
_STATE_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class AppState:
    """What docker compose last brought up for an app."""

    revision: str
    deployed_at: float  # epoch seconds
    services: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A revision of an app that was refused, and by which deploy config."""

    revision: str
    config: str  # a fingerprint of the deploy config that refused it
    error: str


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0600) through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    temporary.replace(path)


class DeployWorkspace:
    """The files of every app (see the module docstring). Small, synchronous file operations."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "deploy"
        self.instance = ""  # set by prepare()

    def prepare(self) -> str:
        """Create the root folder (0700) if needed; return this Headwater's instance id."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        path = self.root / _INSTANCE_FILE
        with contextlib.suppress(OSError, UnicodeDecodeError):
            instance = path.read_text().strip()
            if len(instance) == _INSTANCE_DIGITS and all(char in "0123456789abcdef" for char in instance):
                self.instance = instance
                return instance
        self.instance = secrets.token_hex(_INSTANCE_DIGITS // 2)
        _write_private(path, self.instance.encode())
        return self.instance

    def directory(self, app: str) -> Path:
        """The folder of ``app`` (which must be a valid app name)."""
        return self.root / (_DIRECTORY_PREFIX + check_app_name(app))

    def apps(self) -> list[str]:
        """Apps that have a folder, sorted (folders with other names are ignored)."""
        if not self.root.is_dir():
            return []
        names = []
        for entry in self.root.iterdir():
            name = entry.name.removeprefix(_DIRECTORY_PREFIX)
            if entry.name.startswith(_DIRECTORY_PREFIX) and app_name_problem(name) is None and entry.is_dir():
                names.append(name)
        return sorted(names)

    def write_compose(self, app: str, compose: str, services: tuple[str, ...]) -> tuple[Path, ...]:
        """Store the compose file and the label file; return them in the order compose reads them."""
        directory = self.directory(app)
        directory.mkdir(mode=0o700, exist_ok=True)
        directory.chmod(0o700)
        compose_file = directory / _COMPOSE_FILE
        labels_file = directory / _LABELS_FILE
        _write_private(compose_file, compose.encode())
        labels = {
            "services": {
                service: {"labels": {APP_LABEL: app, INSTANCE_LABEL: self.instance}} for service in services
            }
        }
        _write_private(labels_file, json.dumps(labels, indent=2).encode())  # JSON is YAML
        return compose_file, labels_file

    def read_state(self, app: str) -> AppState | None:
        """The state of the last successful ``up``, or None (never, or unreadable)."""
        try:
            document = json.loads((self.directory(app) / _STATE_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("version") != _STATE_VERSION:
            return None
        revision, deployed_at, services = (
            document.get("revision"),
            document.get("deployed_at"),
            document.get("services"),
        )
        if (
            not isinstance(revision, str)
            or not isinstance(deployed_at, int | float)
            or not isinstance(services, list)
        ):
            return None
        return AppState(revision=revision, deployed_at=float(deployed_at), services=tuple(map(str, services)))

    def write_state(self, app: str, state: AppState) -> None:
        """Record a successful ``up``."""
        document = {
            "version": _STATE_VERSION,
            "revision": state.revision,
            "deployed_at": state.deployed_at,
            "services": list(state.services),
        }
        _write_private(self.directory(app) / _STATE_FILE, json.dumps(document).encode())

    def remove(self, app: str) -> None:
        """Delete the folder of ``app`` (nothing happens if there is none)."""
        shutil.rmtree(self.directory(app), ignore_errors=True)

    def read_refusals(self) -> dict[str, Refusal]:
        """The refused revisions by app (none when the file is missing or unreadable)."""
        try:
            document = json.loads((self.root / _REFUSED_FILE).read_bytes())
        except (OSError, ValueError):
            return {}
        apps = document.get("apps") if isinstance(document, dict) else None
        if document.get("version") != _STATE_VERSION or not isinstance(apps, dict):
            return {}
        refusals = {}
        for app, entry in apps.items():
            if app_name_problem(app) is None and isinstance(entry, dict):
                revision, config, error = entry.get("revision"), entry.get("config"), entry.get("error")
                if isinstance(revision, str) and isinstance(config, str) and isinstance(error, str):
                    refusals[app] = Refusal(revision=revision, config=config, error=error)
        return refusals

    def write_refusals(self, refusals: dict[str, Refusal]) -> None:
        """Replace the refused revisions with ``refusals``."""
        document = {
            "version": _STATE_VERSION,
            "apps": {
                app: {"revision": refusal.revision, "config": refusal.config, "error": refusal.error}
                for app, refusal in sorted(refusals.items())
            },
        }
        _write_private(self.root / _REFUSED_FILE, json.dumps(document).encode())
