"""``headwater deploy up|down|status``: docker compose apps through retained messages.

Owns these subcommands: reading and checking the compose file and ``--env`` before anything is
published, following an app's statuses until it runs, fails or is removed, the status table and
``status --watch``, and how client errors become exit statuses. Talks to Headwater only through
:class:`headwater.clients.deploy.DeployClient`, imported when a command runs; it never runs
docker itself (the deploy plugin on the gateway does).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from headwater.broker.cli._client_options import add_client_options, seconds
from headwater.broker.cli._exits import (
    EXIT_FAILURE,
    EXIT_FORBIDDEN,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    fail,
)
from headwater.broker.cli._output import print_json, table
from headwater.clients.connection import InvalidURLError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from headwater.clients.deploy import DeployClient
    from headwater.wire.deploy import DeploymentStatus

__all__ = ["add_deploy_command"]

_DEPLOY_HELP = """\
Deploy, update and remove docker compose apps on a Headwater gateway. The desired state of app
APP is the retained message on <prefix>/deploy/APP; Headwater runs docker compose and reports
on <prefix>/deploy/APP/status (docs/deploy.md).

  headwater deploy up web -f compose.yml            deploy or update, wait until it runs
  headwater deploy up web -f compose.yml --pull never --force
  headwater deploy down web                         remove, wait until it is gone
  headwater deploy status                           every app, as a table
  headwater deploy status web --watch               one app, then its changes until Ctrl-C

The same works with nothing but mosquitto: mosquitto_pub -r -t headwater/deploy/web -f compose.yml
"""


def add_deploy_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``headwater deploy`` and its actions to the subcommands."""
    deploy = commands.add_parser(
        "deploy",
        help="run docker compose apps through retained messages",
        description=_DEPLOY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    deploy_actions = deploy.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = deploy_actions.add_parser(
        "up",
        help="deploy or update APP from a compose file",
        description="Publish COMPOSE_FILE as the retained desired state of APP, then print its status "
        "changes until it is running (exit 0), degraded or failed (exit 1).",
    )
    up.add_argument(
        "app", metavar="APP", help="app name: 1-63 of a-z 0-9 _ -, starting with a letter or digit"
    )
    up.add_argument(
        "-f", "--file", required=True, metavar="COMPOSE_FILE", help="the compose file ('-': standard input)"
    )
    up.add_argument(
        "--pull",
        choices=("always", "missing", "never"),
        help="image pull policy for this app (default: the gateway's deploy.pull); never = offline",
    )
    up.add_argument("--force", action="store_true", help="recreate the containers even if nothing changed")
    up.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable for ${NAME} in the compose file (repeatable)",
    )
    up.add_argument(
        "--registry-auth",
        action="append",
        default=[],
        metavar="NAME",
        help="use the gateway's registry credential NAME (deploy.registries; repeatable)",
    )
    _add_wait_options(up)
    add_client_options(up, _cmd_deploy)
    down = deploy_actions.add_parser(
        "down",
        help="remove APP",
        description="Publish the empty retained message for APP (its containers and networks go, named "
        "volumes stay), then wait until it is removed.",
    )
    down.add_argument("app", metavar="APP")
    _add_wait_options(down)
    add_client_options(down, _cmd_deploy)
    status = deploy_actions.add_parser(
        "status",
        help="show deployment status",
        description="Show the status of every app (or of APP) from the retained status topics.",
    )
    status.add_argument("app", nargs="?", metavar="APP")
    status.add_argument("--watch", action="store_true", help="then print every change until Ctrl-C")
    add_client_options(status, _cmd_deploy)


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for the outcome (default: 600)",
    )
    parser.add_argument("--no-wait", action="store_true", help="publish and exit without waiting")


def _cmd_deploy(args: argparse.Namespace) -> int:
    """Run one ``headwater deploy ACTION``; errors become exit statuses."""
    from headwater.clients.deploy import (  # noqa: PLC0415 - keeps `headwater run` light
        DeployClient,
        DeployClientError,
        DeployForbiddenError,
        DeployTimeoutError,
        InvalidDeployRequestError,
        app_topic_problem,
    )
    from headwater.wire.deploy import app_name_problem  # noqa: PLC0415

    # Only a deployment needs a valid name: a refused one must stay removable and readable.
    check = app_name_problem if args.action == "up" else app_topic_problem
    if args.app is not None and (problem := check(args.app)) is not None:
        fail(problem)
    payload = _compose_payload(args) if args.action == "up" else b""
    try:
        with DeployClient.connect(args.url, topic_prefix=args.topic_prefix) as client:
            if args.action == "status":
                return _deploy_status(client, args)
            return _deploy_change(client, args, payload)
    except InvalidURLError as exc:
        fail(f"--url: {exc}")
    except InvalidDeployRequestError as exc:
        fail(str(exc))
    except DeployTimeoutError as exc:
        fail(str(exc), EXIT_FAILURE)
    except DeployForbiddenError as exc:
        fail(str(exc), EXIT_FORBIDDEN)
    except DeployClientError as exc:
        fail(str(exc), EXIT_FAILURE)


def _compose_payload(args: argparse.Namespace) -> bytes:
    from headwater.clients.deploy import InvalidDeployRequestError, build_payload  # noqa: PLC0415

    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            fail(f"{args.file}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        fail(f"{args.file}: not UTF-8 text")
    env: dict[str, str] = {}
    for item in args.env:
        name, equals, value = item.partition("=")
        if not equals or not name:
            fail(f"--env: expected NAME=VALUE, got {item!r}")
        env[name] = value
    try:
        return build_payload(
            text, pull=args.pull, force=args.force, env=env, registry_auth=tuple(args.registry_auth)
        )
    except InvalidDeployRequestError as exc:
        fail(f"{args.file}: {exc}")


def _deploy_change(client: DeployClient, args: argparse.Namespace, payload: bytes) -> int:
    """``up`` and ``down``: publish, then follow the app's statuses to the end."""
    revision = client.publish(args.app, payload)
    what = f"revision {revision} ({len(payload)} bytes)" if revision else "removal"
    if args.no_wait:
        if args.json:
            print_json({"app": args.app, "revision": revision, "published": True})
        else:
            print(f"{args.app}: published {what}")
        return EXIT_OK
    if not args.json:
        print(
            f"{args.app}: published {what}; waiting for Headwater (Ctrl-C stops waiting, not the deployment)"
        )

    def show(status: DeploymentStatus) -> None:
        if args.json:
            print_json(status.to_json_dict())
        else:
            print(_status_line(status), flush=True)

    def still_waiting(seconds: float, last: DeploymentStatus | None) -> None:
        if not args.json:
            state = last.state if last is not None else "no status yet"
            print(f"{args.app}: still waiting after {seconds:.0f}s ({state})", flush=True)

    final = client.wait(
        args.app, revision=revision, timeout=args.timeout, on_status=show, on_quiet=still_waiting
    )
    if not args.json:
        for line in _status_details(final):
            print(line, file=sys.stderr if final.state == "failed" else sys.stdout)
    return EXIT_OK if final.state in {"running", "removed"} else EXIT_FAILURE


def _status_line(status: DeploymentStatus) -> str:
    """``10:15:00.123  web  running  rev 3f2a...  web=running api=running(healthy)``."""
    moment = status.updated_at[11:23] if len(status.updated_at) >= 23 else status.updated_at  # noqa: PLR2004
    parts = [moment, status.app, status.state]
    if status.revision:
        parts.append(f"rev {status.revision}")
    if status.services:
        parts.append(_services_summary(status))
    if status.error and status.state != "failed":
        parts.append(f"({status.error})")
    return "  ".join(parts)


def _services_summary(status: DeploymentStatus) -> str:
    shown = []
    for service in status.services:
        text = f"{service.name}={service.state}"
        if service.health:
            text += f"({service.health})"
        shown.append(text)
    return " ".join(shown) or "-"


def _status_details(status: DeploymentStatus) -> list[str]:
    lines = []
    if status.error:
        lines.append(f"{status.app}: {status.state}: {status.error}")
    if status.output:
        lines.append("docker compose said:")
        lines += [f"  {line}" for line in status.output]
    for service in status.services:
        if service.ports:
            lines.append(f"  {service.name}: {', '.join(service.ports)}")
    return lines


def _deploy_status(client: DeployClient, args: argparse.Namespace) -> int:
    statuses, plugin = client.statuses(args.app)
    if args.json:
        if args.app is None and plugin is not None:
            print_json({"plugin": plugin})
        for app in sorted(statuses):
            print_json(statuses[app].to_json_dict())
    else:
        print("\n".join(_status_table(args.app, statuses, plugin)))
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):
            for update in client.watch(args.app):
                if update.status is None:
                    continue
                if args.json:
                    print_json(update.status.to_json_dict())
                else:
                    print(_status_line(update.status), flush=True)
        return EXIT_OK
    return EXIT_NOT_FOUND if args.app is not None and args.app not in statuses else EXIT_OK


def _status_table(
    app: str | None, statuses: dict[str, DeploymentStatus], plugin: Mapping[str, object] | None
) -> list[str]:
    lines = []
    if plugin is not None and app is None:
        detail = plugin.get("error") or (
            f"Docker {plugin.get('engine_version')} at {plugin.get('docker_host')}, "
            f"docker compose {plugin.get('compose')}"
        )
        lines.append(f"deploy: {plugin.get('state', '?')} ({detail})")
    if statuses:
        rows = [
            (
                name,
                status.state,
                status.revision or "-",
                _services_summary(status),
                status.updated_at or "-",
                (status.error or "")[:80],
            )
            for name, status in sorted(statuses.items())
        ]
        lines += table(("APP", "STATE", "REVISION", "SERVICES", "UPDATED", "ERROR"), rows)
    elif app is not None:
        lines.append(f"{app}: no status (not deployed here, removed, or you may not read it)")
    else:
        lines.append("no apps")
    return lines
