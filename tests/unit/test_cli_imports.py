"""What the ``headwater`` commands load: only ``run`` may bring in the broker and the store.

Each check runs in a fresh interpreter (this test process has long imported amqtt).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

# The broker's and the store's dependencies: heavy, and needed by `headwater run` alone.
SERVER_ONLY = ("amqtt", "rocksdict")


def _loaded_after(code: str, *, stdin: str = "") -> set[str]:
    """The top-level modules loaded by a fresh interpreter once it has run ``code``."""
    script = textwrap.dedent(code) + "\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + script],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_importing_the_cli_loads_neither_broker_nor_store() -> None:
    loaded = _loaded_after("import headwater.broker.cli")
    assert not loaded & set(SERVER_ONLY)


def test_passwd_loads_neither_broker_nor_store(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    loaded = _loaded_after(
        f"""
        from headwater.broker.cli import main
        assert main(["passwd", {str(passwords)!r}, "alice"]) == 0
        """,
        stdin="alice-secret\n",
    )
    assert passwords.read_text().startswith("alice:$argon2id$")
    assert not loaded & set(SERVER_ONLY)


def test_a_client_command_loads_neither_broker_nor_store() -> None:
    url = f"mqtt://127.0.0.1:{_closed_port()}"
    loaded = _loaded_after(
        f"""
        import contextlib
        from headwater.broker.cli import main
        with contextlib.suppress(SystemExit):  # nothing listens there: exit status 1
            main(["streams", "ls", "--url", {url!r}, "--timeout", "1"])
        assert "headwater.clients.streams" in sys.modules
        """
    )
    assert "paho" in loaded
    assert not loaded & set(SERVER_ONLY)
