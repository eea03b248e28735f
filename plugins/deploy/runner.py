"""``ComposeRunner``: the only code that runs docker compose.

Owns finding a docker compose v2 program, building its command lines, its environment, running
it as an asyncio subprocess with a timeout, keeping the last lines of its output, and the
temporary ``DOCKER_CONFIG`` directory that carries registry credentials to it. It must never
decide *what* to deploy (that is the plugin) and never write credentials anywhere but that
temporary directory.

Which program: ``deploy.compose_command`` when configured; else ``docker compose`` when the
docker CLI has the compose plugin; else a standalone ``docker-compose`` that says it is v2 (the
Headwater image ships the standalone binary and may have no docker CLI). Version 1 (Python
docker-compose) is refused.

Environment: docker compose does **not** inherit Headwater's environment (which may hold AWS
credentials that a compose file could otherwise copy into a container with ``${VAR}``). It gets
``PATH``, ``HOME``, locale, TLS and proxy variables, ``DOCKER_CONFIG``/``DOCKER_CERT_PATH``/
``DOCKER_TLS_VERIFY`` when set, the deployment's ``env``, and ``DOCKER_HOST`` set to
``deploy.docker_host`` (last, so nothing overrides it).

Every run is killed (SIGTERM to its process group, SIGKILL 5 s later) when it exceeds
``timeout`` or when the calling task is cancelled; nothing is left running.

Memory: every compose run (not the version probe) starts with ``RLIMIT_DATA`` set to
``memory_limit`` (``deploy.compose_memory_limit``), inherited by the compose plugin that
``docker compose`` starts. A file that makes compose allocate more (a YAML alias bomb that got
past the checks, a huge model) fails fast with "out of memory" instead of taking the gateway's
memory until the timeout. How the limit is set, and why not otherwise:

* not ``preexec_fn``: it runs Python between fork and exec, which is unsafe in a process with
  threads (Headwater has them: ``asyncio.to_thread``, RocksDB); instead the child is a tiny
  ``python -I -S -c`` that sets the limit and ``exec``s compose (the same interpreter as
  Headwater, so it exists wherever Headwater runs; ``prlimit`` may not);
* not ``RLIMIT_AS``: Go reserves hundreds of MiB of address space at start, so compose dies at
  once below ~1 GiB of address space whatever it would really use; ``RLIMIT_DATA`` counts the
  memory it writes to, which is what grows.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from headwater.plugins.deploy.errors import ComposeFailedError, ComposeTimeoutError, ComposeUnavailableError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from headwater.wire.deploy import PullPolicy

__all__ = ["ComposeProgram", "ComposeProject", "ComposeRunner", "temporary_docker_config"]

logger = logging.getLogger(__name__)

_PASSED_ENV: Final = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
)
_VERSION: Final = re.compile(r"v?(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)")
_PROBE_TIMEOUT: Final = 30.0
_KILL_GRACE: Final = 5.0
_READ_LIMIT: Final = 1024 * 1024  # one output line may be long (pull progress, JSON)
# `--progress` became a global flag in compose 2.20 (older v2 releases reject it).
_PROGRESS_FLAG_SINCE: Final = (2, 20)
_DOCKER_HUB_AUTH_KEY: Final = "https://index.docker.io/v1/"
_SUBCOMMANDS: Final = ("version", "config", "up", "down")
# argv[1] is the limit in bytes, argv[2:] the program and its arguments (see the module docstring).
_LIMIT_MEMORY: Final = """
import os, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.exit(f"cannot run {sys.argv[2]}: {exc.strerror}")
"""
_OUT_OF_MEMORY: Final = ("cannot allocate memory", "out of memory", "MemoryError")


@dataclass(frozen=True, slots=True)
class ComposeProgram:
    """A docker compose program that answered ``version``."""

    argv: tuple[str, ...]  # ("docker", "compose") or ("/usr/local/bin/docker-compose",)
    version: str  # "2.40.3", or the first line of its answer when that has no version number
    # The docker CLI's plugin folder: linked into a temporary DOCKER_CONFIG, or `docker compose`
    # would not find its compose plugin there.
    plugin_dir: Path | None = None

    @property
    def version_tuple(self) -> tuple[int, int]:
        """``(major, minor)``; ``(0, 0)`` when the answer had no version number."""
        match = _VERSION.search(self.version)
        return (int(match["major"]), int(match["minor"])) if match else (0, 0)


@dataclass(frozen=True, slots=True)
class ComposeProject:
    """One compose project to run: name, files, and what its runs need."""

    name: str
    files: tuple[Path, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    docker_config: Path | None = None  # a temporary DOCKER_CONFIG with registry credentials


@dataclass(frozen=True, slots=True)
class _Completed:
    returncode: int
    stdout: bytes  # only when captured separately (config --format json)
    lines: tuple[str, ...]  # the last lines of the merged (or stderr) output
    out_of_memory: bool = False  # a line said so (the line itself may be gone from `lines`)


class ComposeRunner:
    """Runs docker compose for the deploy plugin (see the module docstring)."""

    def __init__(
        self,
        *,
        docker_host: str,
        timeout: float,
        command: Sequence[str] | None = None,
        keep_lines: int = 40,
        environ: Mapping[str, str] | None = None,
        memory_limit: int | None = None,
    ) -> None:
        self.docker_host = docker_host
        self.timeout = timeout
        self.memory_limit = memory_limit  # bytes of RLIMIT_DATA per compose run; None: no limit
        self._command = tuple(command) if command else None
        self._keep_lines = keep_lines
        self._environ = dict(os.environ if environ is None else environ)
        self._program: ComposeProgram | None = None

    @property
    def program(self) -> ComposeProgram | None:
        """The program found by :meth:`discover` (None before)."""
        return self._program

    # --- finding the program ----------------------------------------------------------------

    async def discover(self) -> ComposeProgram:
        """Find the compose program (once; later calls return it). Raises ComposeUnavailableError."""
        if self._program is not None:
            return self._program
        if self._command is not None:
            candidates = [self._command]
        else:
            candidates = []
            if shutil.which("docker", path=self._environ.get("PATH")):
                candidates.append(("docker", "compose"))
            if shutil.which("docker-compose", path=self._environ.get("PATH")):
                candidates.append(("docker-compose",))
        problems = []
        for argv in candidates:
            try:
                program = await self._probe(argv)
            except ComposeUnavailableError as exc:
                problems.append(str(exc))
                continue
            self._program = program
            logger.info("deploy: using %s (version %s)", " ".join(program.argv), program.version)
            return program
        if not candidates:
            problems.append("neither `docker` (with the compose plugin) nor `docker-compose` is on PATH")
        raise ComposeUnavailableError("no docker compose v2 found: " + "; ".join(problems))

    async def _probe(self, argv: tuple[str, ...]) -> ComposeProgram:
        shown = " ".join(argv)
        try:
            completed = await self._exec(
                argv, ("version",), env=self._base_env(), cwd=Path("/"), time_limit=_PROBE_TIMEOUT
            )
        except OSError as exc:
            raise ComposeUnavailableError(f"{shown}: {exc.strerror or exc}") from exc
        except ComposeTimeoutError as exc:
            raise ComposeUnavailableError(f"{shown} version: no answer within {_PROBE_TIMEOUT:g}s") from exc
        answer = next((line for line in completed.lines if line.strip()), "")
        if completed.returncode != 0:
            raise ComposeUnavailableError(f"{shown} version exited {completed.returncode}: {answer[:200]}")
        match = _VERSION.search(answer)
        if match is None and self._command is None:  # found on PATH: it must say it is v2
            raise ComposeUnavailableError(f"{shown} version did not name a version: {answer[:100]!r}")
        if match is not None and int(match["major"]) < 2:  # noqa: PLR2004 - compose v1 is refused
            raise ComposeUnavailableError(
                f"{shown} is docker-compose {match.group(0)}; version 2 is required"
            )
        version = match.group(0).lstrip("v") if match else answer[:80]
        plugin_dir = None
        if argv[:2] == ("docker", "compose"):
            config_dir = Path(
                self._environ.get("DOCKER_CONFIG") or Path(self._environ.get("HOME", "/root")) / ".docker"
            )
            if (config_dir / "cli-plugins" / "docker-compose").exists():
                plugin_dir = config_dir / "cli-plugins"
        return ComposeProgram(argv=argv, version=version, plugin_dir=plugin_dir)

    # --- commands --------------------------------------------------------------------------

    async def config(self, project: ComposeProject) -> dict[str, Any]:
        """The resolved model (``config --format json``); raises ComposeFailedError."""
        completed = await self._compose(project, ("config", "--format", "json"), separate_stdout=True)
        if completed.returncode != 0:
            raise ComposeFailedError(_failure("docker compose config", completed), completed.lines)
        try:
            model = json.loads(completed.stdout)
        except ValueError as exc:
            raise ComposeFailedError(
                f"docker compose config printed no JSON: {exc}", completed.lines
            ) from exc
        if not isinstance(model, dict):
            raise ComposeFailedError("docker compose config printed no JSON object", completed.lines)
        return model

    async def up(self, project: ComposeProject, *, pull: PullPolicy, force: bool) -> tuple[str, ...]:
        """``up --detach --remove-orphans --pull POLICY [--force-recreate]``; returns the last lines."""
        args = ["up", "--detach", "--remove-orphans", "--pull", pull]
        if force:
            args.append("--force-recreate")
        completed = await self._compose(project, tuple(args))
        if completed.returncode != 0:
            raise ComposeFailedError(_failure("docker compose up", completed), completed.lines)
        return completed.lines

    async def down(self, project_name: str, *, stop_timeout: int = 10) -> tuple[str, ...]:
        """``down --remove-orphans`` by project name alone: containers and networks go, volumes stay.

        No compose file is given: compose finds the project's resources by their labels. It
        runs in ``/`` because compose would otherwise pick up a compose file from the working
        directory or one of its parents.
        """
        project = ComposeProject(name=project_name, files=())
        args = ("down", "--remove-orphans", "--timeout", str(stop_timeout))
        completed = await self._compose(project, args)
        if completed.returncode != 0:
            raise ComposeFailedError(_failure("docker compose down", completed), completed.lines)
        return completed.lines

    # --- running ----------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        env: dict[str, str] = {name: self._environ[name] for name in _PASSED_ENV if name in self._environ}
        env["DOCKER_HOST"] = self.docker_host
        return env

    def environment(self, project: ComposeProject) -> dict[str, str]:
        """The environment docker compose runs with for ``project`` (see the module docstring)."""
        env: dict[str, str] = {name: self._environ[name] for name in _PASSED_ENV if name in self._environ}
        env.update(project.env)
        if project.docker_config is not None:
            env["DOCKER_CONFIG"] = str(project.docker_config)
        env["DOCKER_HOST"] = self.docker_host
        return env

    async def _compose(
        self, project: ComposeProject, args: tuple[str, ...], *, separate_stdout: bool = False
    ) -> _Completed:
        program = await self.discover()
        global_args: list[str] = ["--project-name", project.name]
        for file in project.files:
            global_args += ["--file", str(file)]
        global_args += ["--ansi", "never"]
        if program.version_tuple >= _PROGRESS_FLAG_SINCE:
            global_args += ["--progress", "plain"]
        cwd = project.files[0].parent if project.files else Path("/")
        argv = program.argv
        if self.memory_limit is not None:
            argv = (sys.executable, "-I", "-S", "-c", _LIMIT_MEMORY, str(self.memory_limit), *argv)
        try:
            completed = await self._exec(
                argv,
                (*global_args, *args),
                env=self.environment(project),
                cwd=cwd,
                time_limit=self.timeout,
                separate_stdout=separate_stdout,
                log_as=project.name,
            )
        except OSError as exc:
            raise ComposeFailedError(f"cannot run {' '.join(program.argv)}: {exc.strerror or exc}") from exc
        if not completed.out_of_memory:
            return completed
        if completed.returncode == 0 or self.memory_limit is None:
            return replace(completed, out_of_memory=False)
        reason = f"ran out of memory (deploy.compose_memory_limit: {self.memory_limit // (1024 * 1024)}MiB)"
        return replace(completed, lines=(*completed.lines, reason))

    async def _exec(
        self,
        argv: Sequence[str],
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        time_limit: float,
        separate_stdout: bool = False,
        log_as: str | None = None,
    ) -> _Completed:
        lines: collections.deque[str] = collections.deque(maxlen=self._keep_lines)
        out_of_memory = False
        process = await asyncio.create_subprocess_exec(
            *argv,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if separate_stdout else asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,  # its own process group: a kill reaches compose's children too
            limit=_READ_LIMIT,
        )
        assert process.stdout is not None  # noqa: S101 - PIPE was asked for

        async def collect(stream: asyncio.StreamReader) -> None:
            nonlocal out_of_memory
            while raw := await stream.readline():
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                out_of_memory = out_of_memory or any(sign in line for sign in _OUT_OF_MEMORY)
                if log_as is not None:
                    logger.debug("compose %s: %s", log_as, line)

        stdout = b""
        try:
            async with asyncio.timeout(time_limit):
                if separate_stdout:
                    assert process.stderr is not None  # noqa: S101
                    stdout, _, _ = await asyncio.gather(
                        process.stdout.read(), collect(process.stderr), process.wait()
                    )
                else:
                    await asyncio.gather(collect(process.stdout), process.wait())
        except TimeoutError as exc:
            await _kill(process)
            command = next((arg for arg in args if arg in _SUBCOMMANDS), " ".join(args[:1]))
            msg = f"{' '.join(argv)} {command} took longer than {time_limit:g}s and was stopped"
            raise ComposeTimeoutError(msg, tuple(lines)) from exc
        finally:
            if process.returncode is None:
                await _kill(process)
        assert process.returncode is not None  # noqa: S101 - waited for
        return _Completed(
            returncode=process.returncode, stdout=stdout, lines=tuple(lines), out_of_memory=out_of_memory
        )


async def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period; wait even if cancelled again."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.shield(asyncio.wait_for(process.wait(), _KILL_GRACE))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.shield(process.wait())


def _failure(what: str, completed: _Completed) -> str:
    """One line: what failed and compose's most telling line (its last error line)."""
    if completed.out_of_memory:
        return f"{what} exited {completed.returncode}: {completed.lines[-1]}"
    reason = next(
        (line.strip() for line in reversed(completed.lines) if line.strip() and "error" in line.lower()),
        next((line.strip() for line in reversed(completed.lines) if line.strip()), "no output"),
    )
    return f"{what} exited {completed.returncode}: {reason}"


# --- credentials ---------------------------------------------------------------------------------


def _auth_key(server: str) -> str:
    return _DOCKER_HUB_AUTH_KEY if server in {"docker.io", "index.docker.io"} else server


def _runtime_directory() -> str | None:
    """A memory-backed folder for secrets (``/dev/shm``) when there is one; else the default tmp."""
    shm = Path("/dev/shm")  # noqa: S108 - a tmpfs on purpose: credentials must not reach a disk
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def temporary_docker_config(
    credentials: Mapping[str, tuple[str, str]], *, plugin_dir: Path | None = None
) -> Iterator[Path]:
    """A private ``DOCKER_CONFIG`` folder holding ``credentials`` for one compose run.

    ``credentials`` maps a registry host to ``(username, password)``. The folder (mode 0700,
    on ``/dev/shm`` when possible) holds ``config.json`` (0600) and, when given, a link to the
    docker CLI's ``cli-plugins``; it is deleted when the block ends, whatever happens.
    """
    directory = Path(tempfile.mkdtemp(prefix="headwater-deploy-", dir=_runtime_directory()))
    try:
        auths = {
            _auth_key(server): {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
            for server, (user, password) in credentials.items()
        }
        descriptor = os.open(directory / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"auths": auths}, file)
        if plugin_dir is not None:
            (directory / "cli-plugins").symlink_to(plugin_dir, target_is_directory=True)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
