"""The sandbox: every escape attempt runs OUTSIDE too, to show the code works when not contained.

Needs root (namespaces, mounts, dropping to uid 65534): skipped otherwise, except the
fail-closed tests, which run everywhere.
"""

import concurrent.futures
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from jaxrl_llm.envs.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    find_python,
)

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(SandboxLimits(wall_s=10.0, cpu_s=10))
    try:
        sb.check()
    except SandboxUnavailable as e:
        # Root without CAP_SYS_ADMIN (an unprivileged container): the mechanism is missing
        # and the sandbox correctly refuses. Any other set-up failure is a bug: fail.
        if "unshare" in str(e) and "Operation not permitted" in str(e):
            pytest.skip(f"namespaces unavailable here: {e}")
        raise
    return sb


def run_outside(code: str, *, as_nobody: bool = False, cwd=None) -> subprocess.CompletedProcess:
    """The same program, unconfined (optionally as the sandbox's uid, to isolate the mechanism)."""
    kw = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_nobody else {}
    python = find_python(NOBODY, NOBODY) if as_nobody else sys.executable
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=30, cwd=cwd, **kw
    )


class OneShotServer:
    """A TCP server on 127.0.0.1 that accepts at most one connection and then closes."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        deadline = time.monotonic() + 20
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5)
                    self.received = conn.recv(100)
                return
        finally:
            self.sock.close()

    def close(self):
        """Waits for the one connection (if any is under way), then stops listening."""
        time.sleep(0.1)
        self.stop.set()
        self.thread.join(timeout=30)


@needs_root
def test_network_is_unreachable(sandbox):
    code = (
        "import socket\n"
        "s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "s.sendall(b'escaped'); s.close(); print('connected')\n"
    )
    outside = OneShotServer()
    res = run_outside(code.format(port=outside.port))
    outside.close()
    assert res.stdout.strip() == "connected" and outside.received == b"escaped"

    inside = OneShotServer()
    result = sandbox.run(code.format(port=inside.port))
    inside.close()
    assert result.exit_code == 1 and "connected" not in result.stdout
    assert "Network is unreachable" in result.stderr
    assert inside.received == b""


@pytest.fixture
def open_dir():
    """A directory every user may write to (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="sandbox_test_")
    os.chmod(path, 0o777)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_writes_outside_the_working_directory_fail(sandbox, open_dir, monkeypatch):
    target_dir = open_dir  # writable by everyone: only the sandbox's mounts can stop it
    code = (
        "import os\n"
        "open('local.txt', 'w').write('mine'); print(open('local.txt').read(), os.getcwd())\n"
        "open({path!r}, 'w').write('escaped'); print('wrote')\n"
    )
    res = run_outside(
        code.format(path=str(target_dir / "outside.txt")), as_nobody=True, cwd=target_dir
    )
    assert "wrote" in res.stdout and (target_dir / "outside.txt").read_text() == "escaped"

    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(
        tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1]
    )
    result = sandbox.run(code.format(path=str(target_dir / "inside.txt")))
    assert result.stdout == "mine /tmp/sandbox\n" and "wrote" not in result.stdout
    assert not (target_dir / "inside.txt").exists()
    assert len(made) == 1 and not os.path.exists(made[0])  # the fresh directory is removed
    for path in ("/tmp/escape_probe", "/var/tmp/escape_probe", "/dev/shm/escape_probe", "/etc/x"):
        r = sandbox.run(f"open({path!r}, 'w')")
        assert r.exit_code == 1 and "Read-only file system" in r.stderr, path
        assert not os.path.exists(path), path


@needs_root
def test_shared_scratch_directories_and_their_sockets_are_hidden(sandbox, open_dir):
    path = str(open_dir / "service.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(1)
    server.settimeout(5)
    code = (
        "import os, socket\n"
        f"print(sorted(os.listdir({str(open_dir)!r})))\n"
        f"socket.socket(socket.AF_UNIX).connect({path!r}); print('connected')\n"
    )
    try:
        res = run_outside(code, as_nobody=True)
        assert res.stdout.split("\n")[:2] == ["['service.sock']", "connected"]
        server.accept()[0].close()
        result = sandbox.run(code)
        assert result.stdout == "" and "FileNotFoundError" in result.stderr
        assert sandbox.run("import os; print(os.listdir('/tmp'))").stdout == "['sandbox']\n"
    finally:
        server.close()


@needs_root
def test_fork_bomb_is_stopped_by_the_process_limit(sandbox):
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range({k}):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(0.5); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)\n"
        "print(n)\n"
    )
    res = run_outside(code.format(k=3))  # fork works: a few children only, never a bomb
    assert res.stdout.split() == ["3"]

    sb = Sandbox(SandboxLimits(wall_s=10.0, max_processes=8))
    t0 = time.monotonic()
    result = sb.run(code.format(k=200))
    out = result.stdout.split()
    assert out[0] == "BlockingIOError" and int(out[1]) < 8, result
    assert time.monotonic() - t0 < 5.0


@needs_root
def test_memory_blow_up_is_a_memory_error(sandbox):
    res = run_outside("x = bytearray(16 * 2**20); print(len(x))")
    assert res.stdout.strip() == str(16 * 2**20)
    result = sandbox.run("x = bytearray(2 * 2**30); print(len(x))")
    assert result.exit_code == 1 and result.stdout == ""
    assert "MemoryError" in result.stderr
    assert "MemoryError" in result.as_observation()


def _marked_processes(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except (OSError, ValueError):
            pass
    return pids


@needs_root
def test_infinite_loop_times_out_and_nothing_survives(sandbox):
    marker = f"sandbox-marker-{uuid.uuid4().hex}"
    # A detached child (new session: outside the process group) that sleeps, and a busy loop.
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "while True:\n"
        "    pass\n"
    )
    sb = Sandbox(SandboxLimits(wall_s=2.0, cpu_s=30))
    out: list[SandboxResult] = []
    thread = threading.Thread(target=lambda: out.append(sb.run(code)))
    thread.start()
    seen = False
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end and not seen:
        seen = bool(_marked_processes(marker))
        time.sleep(0.05)
    thread.join(timeout=30)
    (result,) = out
    assert seen, "the detached child never started"
    assert result.timed_out and result.killed_reason == "timeout" and result.exit_code is None
    assert 1.9 < result.wall_s < 10.0
    time.sleep(0.2)
    assert _marked_processes(marker) == []
    assert "[timed out]" in result.as_observation()


@needs_root
def test_cpu_time_limit_kills(sandbox):
    result = Sandbox(SandboxLimits(wall_s=20.0, cpu_s=1)).run("while True:\n    pass\n")
    assert not result.timed_out and result.killed_reason == "cpu_time"
    assert 0.8 <= result.cpu_s < 5.0  # the kernel accounts CPU time in ticks


@needs_root
def test_parent_environment_is_not_visible(sandbox, monkeypatch):
    monkeypatch.setenv("JAXRL_SANDBOX_SECRET", "s3cret")
    code = "import os; print(os.environ.get('JAXRL_SANDBOX_SECRET'), len(os.environ) <= 1)"
    assert run_outside(code).stdout.split() == ["s3cret", "False"]
    assert sandbox.run(code).stdout.split() == ["None", "True"]


@needs_root
def test_privileges_are_dropped(sandbox):
    code = (
        "import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\nos.setuid(0)\n"
    )
    result = sandbox.run(code)
    assert result.stdout.strip() == "65534 65534 65534 []"
    assert "PermissionError" in result.stderr


@needs_root
def test_crash_and_output_limit_are_results(sandbox):
    crash = sandbox.run("import ctypes; ctypes.string_at(0)")
    assert crash.killed_reason == "signal:SIGSEGV" and not crash.timed_out
    term = sandbox.run("import os, signal; os.kill(os.getpid(), signal.SIGTERM); print('alive')")
    assert term.killed_reason == "signal:SIGTERM" and term.stdout == ""
    big = Sandbox(SandboxLimits(max_output_bytes=100)).run("print('x' * 100000)")
    assert big.truncated and big.stdout == "x" * 100 and big.exit_code == 0
    echo = sandbox.run("print(input()[::-1])", stdin="abc\n")
    assert echo.stdout == "cba\n" and echo.ok


def test_fails_closed_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    sb = Sandbox()
    with pytest.raises(SandboxUnavailable, match="needs root"):
        sb.run("print(1)")
    with pytest.raises(SandboxUnavailable):
        sb.check()


def test_fails_closed_without_a_readable_interpreter(tmp_path):
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    python = hidden / "python3"
    python.symlink_to(sys.executable)
    with pytest.raises(SandboxUnavailable, match="cannot execute"):
        Sandbox(python=str(python)).python()


@needs_root
def test_fails_closed_when_an_isolation_step_fails(sandbox, open_dir):
    marker = open_dir / "ran"
    sb = Sandbox(SandboxLimits(disk_bytes=-1))  # the tmpfs mount fails
    with pytest.raises(SandboxUnavailable, match="program not run"):
        sb.run(f"open({str(marker)!r}, 'w')")
    assert not marker.exists()


@needs_root
def test_concurrent_runs_are_independent(sandbox):
    codes = [f"open('n', 'w').write('{i}'); print(open('n').read())" for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(sandbox.run, codes))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
