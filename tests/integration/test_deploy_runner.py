"""``ComposeRunner``, ``temporary_docker_config`` and ``DockerEngine`` at their I/O boundaries.

Fake compose programs are small shell scripts (a process is the boundary the runner owns);
the real docker compose and the real engine are used where the behaviour depends on them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from headwater.plugins.deploy.engine import DockerEngine
from headwater.plugins.deploy.errors import (
    ComposeFailedError,
    ComposeTimeoutError,
    ComposeUnavailableError,
    DockerUnavailableError,
)
from headwater.plugins.deploy.runner import ComposeProject, ComposeRunner, temporary_docker_config


@pytest.fixture
def fake_program(tmp_path: Path) -> Callable[[str], Path]:
    """``fake_program(body)``: an executable shell script; ``version`` answers as compose v2 does."""

    def make(body: str) -> Path:
        path = tmp_path / f"fake-compose-{uuid.uuid4().hex[:6]}"
        path.write_text(
            "#!/bin/sh\n"
            'for arg in "$@"; do\n'
            '  [ "$arg" = version ] && { echo "Docker Compose version v2.40.3"; exit 0; }\n'
            "done\n" + body
        )
        path.chmod(0o755)
        return path

    return make


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whatever reaps orphans here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def runner_for(
    program: Path,
    *,
    timeout: float = 30,
    environ: dict[str, str] | None = None,
    memory_limit: int | None = None,
) -> ComposeRunner:
    env = {"PATH": os.environ["PATH"], "HOME": "/root", **(environ or {})}
    return ComposeRunner(
        docker_host="unix:///tmp/nowhere.sock",
        timeout=timeout,
        command=[str(program)],
        environ=env,
        memory_limit=memory_limit,
    )


def project(tmp_path: Path, **env: str) -> ComposeProject:
    compose = tmp_path / "compose.yaml"
    compose.write_text("services: {web: {image: x}}\n")
    return ComposeProject(name="headwater-t", files=(compose,), env=env)


def test_compose_gets_a_minimal_environment_and_docker_host_last(
    fake_program: Callable[[str], Path], tmp_path: Path
) -> None:
    dump = tmp_path / "env.txt"
    program = fake_program(f"env > {dump}\necho '{{}}'\n")
    runner = runner_for(program, environ={"AWS_SECRET_ACCESS_KEY": "leak-me", "LANG": "C.UTF-8"})
    model = asyncio.run(runner.config(project(tmp_path, TAG="2")))
    assert model == {}
    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines())
    assert seen["DOCKER_HOST"] == "unix:///tmp/nowhere.sock"
    assert seen["TAG"] == "2"
    assert seen["LANG"] == "C.UTF-8"
    assert "AWS_SECRET_ACCESS_KEY" not in seen


def test_a_failing_run_keeps_its_last_lines(fake_program: Callable[[str], Path], tmp_path: Path) -> None:
    program = fake_program(
        'i=0; while [ $i -lt 100 ]; do echo "line $i"; i=$((i+1)); done\n'
        'echo "Error response from daemon: No such image: x" >&2; exit 3\n'
    )
    runner = runner_for(program)
    with pytest.raises(ComposeFailedError) as info:
        asyncio.run(runner.up(project(tmp_path), pull="never", force=False))
    assert str(info.value) == "docker compose up exited 3: Error response from daemon: No such image: x"
    assert len(info.value.output) == 40
    assert info.value.output[-2:] == ("line 99", "Error response from daemon: No such image: x")


def test_a_run_past_the_timeout_is_killed_with_its_children(
    fake_program: Callable[[str], Path], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # compose ignoring SIGTERM, with a child: both must be gone afterwards.
    program = fake_program(f"trap '' TERM\nsleep 300 &\necho $$ $! > {pids}\necho started\nwait\n")
    runner = runner_for(program, timeout=1)
    with pytest.raises(ComposeTimeoutError) as info:
        asyncio.run(runner.up(project(tmp_path), pull="missing", force=False))
    assert "up took longer than 1s and was stopped" in str(info.value)
    assert info.value.output == ("started",)
    for pid in map(int, pids.read_text().split()):
        assert not running(pid)


def test_cancelling_the_caller_stops_the_run(fake_program: Callable[[str], Path], tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    program = fake_program(f"echo $$ > {pid_file}\nexec sleep 300\n")
    runner = runner_for(program)

    async def cancel_soon() -> None:
        task = asyncio.create_task(runner.up(project(tmp_path), pull="missing", force=False))
        while not pid_file.exists() or not pid_file.read_text().strip():  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert not running(int(pid_file.read_text()))


def test_compose_v1_and_missing_programs_are_refused(tmp_path: Path) -> None:
    v1 = tmp_path / "docker-compose"
    v1.write_text("#!/bin/sh\necho 'docker-compose version 1.29.2, build 5becea4c'\n")
    v1.chmod(0o755)
    with pytest.raises(ComposeUnavailableError, match=r"is docker-compose 1\.29\.2; version 2 is required"):
        asyncio.run(runner_for(v1).discover())
    with pytest.raises(ComposeUnavailableError, match=r"no docker compose v2 found"):
        asyncio.run(runner_for(tmp_path / "missing").discover())
    bare = ComposeRunner(docker_host="unix:///x", timeout=5, environ={"PATH": str(tmp_path / "empty")})
    with pytest.raises(ComposeUnavailableError, match=r"neither `docker` .* nor `docker-compose` is on PATH"):
        asyncio.run(bare.discover())


def test_temporary_docker_config(tmp_path: Path) -> None:
    plugins = tmp_path / "cli-plugins"
    plugins.mkdir()
    with temporary_docker_config(
        {"registry.lan:5000": ("robot", "pw"), "docker.io": ("me", "x")}, plugin_dir=plugins
    ) as directory:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        config = directory / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        auths = json.loads(config.read_text())["auths"]
        assert auths == {
            "registry.lan:5000": {"auth": "cm9ib3Q6cHc="},
            "https://index.docker.io/v1/": {"auth": "bWU6eA=="},
        }
        assert (directory / "cli-plugins").resolve() == plugins
        if Path("/dev/shm").is_dir():  # noqa: S108
            assert directory.parent == Path("/dev/shm")  # noqa: S108
    assert not directory.exists()
    with pytest.raises(RuntimeError), temporary_docker_config({"r": ("u", "p")}) as failing:
        raise RuntimeError
    assert not failing.exists()


# --- with the real docker compose and engine ----------------------------------------------------


@pytest.fixture
def real_project(
    tmp_path: Path, busybox_image: str, deployed_projects: Callable[[str], str]
) -> ComposeProject:
    app = f"r{uuid.uuid4().hex[:8]}"
    name = deployed_projects(app)
    compose = tmp_path / "compose.yaml"
    compose.write_text(
        f"services:\n  web:\n    image: {busybox_image}\n    command: [sleep, '300']\n    init: true\n"
    )
    return ComposeProject(name=name, files=(compose,))


@pytest.mark.docker
def test_docker_compose_finds_its_plugin_with_a_temporary_docker_config(real_project: ComposeProject) -> None:
    runner = ComposeRunner(
        docker_host=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"), timeout=120
    )

    async def scenario() -> tuple[str, ...]:
        program = await runner.discover()
        with temporary_docker_config({"registry.lan:5000": ("u", "p")}, plugin_dir=program.plugin_dir) as cfg:
            output = await runner.up(
                ComposeProject(name=real_project.name, files=real_project.files, docker_config=cfg),
                pull="never",
                force=False,
            )
        resolved = await runner.config(real_project)
        assert list(resolved["services"]) == ["web"]
        await runner.down(real_project.name, stop_timeout=1)
        return output

    output = asyncio.run(scenario())
    assert any("Started" in line for line in output)


@pytest.mark.docker
def test_engine_reads_a_project(real_project: ComposeProject, docker_client: Any) -> None:
    runner = ComposeRunner(docker_host="unix:///var/run/docker.sock", timeout=120)
    engine = DockerEngine("unix:///var/run/docker.sock")

    async def scenario() -> None:
        assert await engine.connect() == docker_client.version()["Version"]
        await runner.up(real_project, pull="never", force=False)
        [container] = await engine.containers(real_project.name)
        assert (container.service, container.state, container.health) == ("web", "running", None)
        assert container.image == "headwater-test/busybox:1"
        assert await engine.missing_images(("headwater-test/busybox:1", "headwater-test/nope:9")) == [
            "headwater-test/nope:9"
        ]
        assert await engine.containers("headwater-no-such-project") == []

    asyncio.run(scenario())


def test_an_absent_engine_is_unavailable_and_leaks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.close()  # the file stays; nobody listens: connection refused
    engine = DockerEngine(f"unix://{path}")
    for _ in range(20):  # an unclosed socket each time would be a ResourceWarning (an error here)
        with pytest.raises(
            DockerUnavailableError, match=f"the Docker engine at unix://{path} does not answer"
        ):
            asyncio.run(engine.connect())
    unsupported = DockerEngine("ssh://gateway")
    with pytest.raises(DockerUnavailableError, match="unsupported Docker host 'ssh://gateway'"):
        asyncio.run(unsupported.connect())


# --- memory ----------------------------------------------------------------------------------------

MiB = 1024 * 1024


def test_compose_runs_with_the_data_memory_limit(fake_program: Callable[[str], Path], tmp_path: Path) -> None:
    limits = tmp_path / "limits"
    # The compose program and what it starts (here: cat) see the limit.
    program = fake_program(f"cat /proc/self/limits > {limits}\necho '{{}}'\n")
    asyncio.run(runner_for(program, memory_limit=96 * MiB).config(project(tmp_path)))
    [line] = [line for line in limits.read_text().splitlines() if line.startswith("Max data size")]
    assert line.split()[3:5] == [str(96 * MiB), str(96 * MiB)]


def test_a_compose_run_that_wants_more_memory_fails_and_says_why(
    fake_program: Callable[[str], Path], tmp_path: Path
) -> None:
    program = fake_program('exec python3 -c "bytearray(512 * 1024 * 1024)"\n')
    with pytest.raises(ComposeFailedError) as info:
        asyncio.run(
            runner_for(program, memory_limit=64 * MiB).up(project(tmp_path), pull="never", force=False)
        )
    assert str(info.value) == (
        "docker compose up exited 1: ran out of memory (deploy.compose_memory_limit: 64MiB)"
    )
    # Without a limit the same program gets its memory.
    asyncio.run(runner_for(program).up(project(tmp_path), pull="never", force=False))


def test_the_real_docker_compose_stops_at_the_limit_on_an_alias_bomb(tmp_path: Path) -> None:
    """The attacker review's 386-byte file, straight to docker compose config (no checks)."""
    lines = ["services:", "  web:", "    image: busybox", "x0: &a0 [x,x,x,x,x,x,x,x,x]"]
    lines += [f"x{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * 9) + "]" for n in range(1, 8)]
    compose = tmp_path / "compose.yaml"
    compose.write_text("\n".join(lines) + "\n")
    runner = ComposeRunner(docker_host="unix:///var/run/docker.sock", timeout=300, memory_limit=128 * MiB)
    with pytest.raises(ComposeFailedError) as info:
        asyncio.run(runner.config(ComposeProject(name="headwater-bomb", files=(compose,))))
    assert not isinstance(info.value, ComposeTimeoutError)
    assert str(info.value).startswith("docker compose config exited 2: ran out of memory")
