"""Start a long-running service in its own session, wait for it, stop it cleanly."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from streamproc.errors import LocalStackError, ServiceStartError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", exclude: Iterable[int] = ()) -> list[int]:
    """``count`` different TCP ports that nothing listens on right now, none in ``exclude``.

    Every socket stays bound until all are chosen: ports picked one at a time can repeat
    (the kernel may hand a just-released port out again), and a broker given the same
    port for two listeners refuses to start.
    """
    skip = set(exclude)
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in skip:
                ports.append(port)
        return ports


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could listen on ``port`` now.

    The test binds with SO_REUSEADDR, as the broker's and the registry's JVM servers do:
    a port whose last connections wait in TIME-WAIT (a service just stopped or killed) is
    free to them, though a plain bind is refused for up to two minutes.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def check_port_free(port: int, what: str, host: str = "127.0.0.1", hint: str = "") -> None:
    """Raise a clear error if ``port`` is taken (TIME-WAIT does not count, see ``port_free``)."""
    if not port_free(port, host):
        raise LocalStackError(
            f"port {port} for the {what} is already in use; "
            + (hint or "pick another port or leave it out to have a free one chosen")
        )


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    # Java stack frames say little to a user; the exception lines above them say what broke.
    kept = [ln for ln in text.strip().splitlines() if not ln.lstrip().startswith(("at ", "..."))]
    return "\n".join(kept[-lines:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    if stat.split(")")[-1].split()[0] != "Z":
        return True
    # A killed JVM's main thread turns zombie before its other threads have exited, and
    # those still hold its listening sockets: it is gone only when no thread is left.
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def cwd_of(pid: int) -> Path | None:
    """The working directory of ``pid`` (Linux), or None where it cannot be read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def spawn(cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` detached in a new session (it outlives the caller); return its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return proc.pid


def wait_ready(
    name: str,
    pid: int,
    log: Path,
    probe: Callable[[], bool],
    timeout_s: float,
) -> None:
    """Call ``probe`` until it returns True; fail fast if the process dies."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        if not pid_alive(pid):
            raise ServiceStartError(
                f"the {name} exited during start; last lines of {log}:\n{tail(log)}"
            )
        if probe():
            return
        if time.monotonic() > deadline:
            stop(pid)
            raise ServiceStartError(
                f"the {name} was not ready after {timeout_s:.0f} s; last lines of {log}:\n"
                f"{tail(log)}"
            )
        time.sleep(delay)  # readiness poll of an external process: no event to wait on
        delay = min(delay * 1.5, 0.5)


def stop(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the process group, wait up to ``grace_s``, then SIGKILL it."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.1)  # waiting for another process to exit: no fd to select on
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
