"""What the benchmark scripts share: the machine they ran on, child processes, signals.

Imported as ``_common`` by the scripts in this folder (``python bench/NAME.py`` puts the folder
on ``sys.path``). Nothing here measures anything.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import signal
import subprocess
from pathlib import Path

__all__ = [
    "cpu_model",
    "exit_on_sigterm",
    "load_average",
    "log_tail",
    "package_version",
    "source_revision",
    "stop_process",
]


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, ``-`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def load_average() -> str:
    """The 1/5/15-minute load averages, for the lines before and after a run."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def source_revision() -> str:
    """The commit of the checkout this script lives in, the code `headwater` runs from source."""
    git = shutil.which("git")
    if git is None:
        return "?"
    here = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(  # noqa: S603 - absolute executable, fixed arguments
            [git, "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, timeout=10, check=True
        )
        status = subprocess.run(  # noqa: S603 - absolute executable, fixed arguments
            [git, "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    dirty = " + uncommitted changes" if status.stdout.strip() else ""
    return head.stdout.decode().strip() + dirty


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps the process."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def exit_on_sigterm(signum: int, _frame: object) -> None:
    """A SIGTERM handler that unwinds (``finally`` blocks stop the children)."""
    raise SystemExit(128 + signum)
