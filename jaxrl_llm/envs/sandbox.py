"""A sandbox for code tools: run untrusted Python source in an isolated, limited process.

    sandbox = Sandbox(SandboxLimits(wall_s=5.0))
    sandbox.check()                       # SandboxUnavailable unless every mechanism works
    result = sandbox.run("print(2 ** 10)")
    result.stdout, result.exit_code       # '1024\\n', 0
    result.as_observation()               # the text a tool environment shows the model

What holds, and by which mechanism (set up by `_sandbox_child.py`, a root launcher process,
before it executes the program; details there):

| guarantee | mechanism |
|---|---|
| no network | new network namespace (only a downed loopback device; abstract Unix sockets are per namespace too) |
| no writes outside the working directory | new mount namespace; the whole mount tree made read-only and nosuid by one recursive `mount_setattr` |
| shared scratch directories hidden | empty read-only tmpfs over /tmp, /var/tmp, /run, /dev/shm (their files and Unix sockets are out of reach) |
| working directory fresh, bounded, removed | a tmpfs (size and inode limits) owned by the sandbox uid at /tmp/sandbox, gone with the namespace; the host-side `tempfile.mkdtemp` directory (the source file) is deleted after the run |
| root's bypasses do not apply | `setgroups([])`, `setgid`/`setuid` to `uid`/`gid` (65534, nobody), checked irreversible; `PR_SET_NO_NEW_PRIVS`; nosuid everywhere |
| bounded CPU, memory, file size, processes, open files | `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE`, `RLIMIT_NPROC`, `RLIMIT_NOFILE`, `RLIMIT_CORE` = 0 |
| bounded wall-clock time, nothing left running | a root init is PID 1 of a new PID namespace and the program its child: when init exits or is killed, the kernel kills every process in the namespace (`setsid` cannot escape; the program cannot signal init). The launcher kills init at `wall_s`; this process kills the launcher's process group at `wall_s + grace_s`; `PR_SET_PDEATHSIG` kills init if the launcher dies |
| no secrets from the parent's environment | `execve` with an empty environment, `python -I` |
| no view of other processes | a fresh read-only `/proc` for the new PID namespace; a new IPC namespace |
| bounded output | stdout and stderr are read here, keeping at most `max_output_bytes` each |

It fails closed: when not root, when no Python interpreter is readable by `uid`, or when any
namespace, mount, rlimit or uid step fails, `run` and `check` raise `SandboxUnavailable`
and the program is not run. Everything the program itself does (exceptions, crashes, time-outs,
`MemoryError`) is a `SandboxResult`, never an exception here.

Not covered: world-readable files elsewhere on the host stay readable (no chroot), and a
Unix socket outside the masked directories that lets "others" write can still be connected
to; `RLIMIT_NPROC` counts processes per uid across the machine, so concurrent sandboxes share
one count; there is no seccomp filter (the kernel's full system-call surface is reachable)
and no cgroup (memory is bounded per process by `RLIMIT_AS`, not in total).
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

__all__ = ["Sandbox", "SandboxLimits", "SandboxResult", "SandboxUnavailable", "find_python"]

_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
_CANDIDATE_PYTHONS = ("/usr/local/bin/python3", "/usr/bin/python3")


class SandboxUnavailable(RuntimeError):
    """An isolation mechanism is missing: the sandbox refuses to run anything."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run (seconds and bytes)."""

    wall_s: float = 5.0
    cpu_s: int = 5
    memory_bytes: int = 256 * 2**20  # RLIMIT_AS
    file_size_bytes: int = 4 * 2**20  # RLIMIT_FSIZE: one file
    disk_bytes: int = 16 * 2**20  # tmpfs size: all files
    max_files: int = 256  # tmpfs inodes
    max_processes: int = 16  # RLIMIT_NPROC (per uid)
    max_open_files: int = 64
    max_output_bytes: int = 8192  # stdout and stderr, each
    grace_s: float = 5.0  # extra wall time before this process kills the launcher itself


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """What a run did. `killed_reason`: None, 'timeout', 'cpu_time', 'file_size' or 'signal:NAME'."""

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    killed_reason: str | None
    truncated: bool = False
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def as_observation(self, *, max_chars: int = 2000) -> str:
        """The text a tool returns to the model: output, then errors and how it ended."""
        parts = [self.stdout.rstrip("\n")] if self.stdout else []
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.timed_out:
            parts.append("[timed out]")
        elif self.killed_reason:
            parts.append(f"[killed: {self.killed_reason}]")
        elif self.exit_code:
            parts.append(f"[exit code {self.exit_code}]")
        if self.truncated:
            parts.append("[output truncated]")
        text = "\n".join(parts) if parts else "[no output]"
        return text if len(text) <= max_chars else text[: max_chars - 20] + "\n[output truncated]"


def _readable_by(path: str, uid: int, gid: int) -> bool:
    """Whether `uid` (no supplementary groups) may execute `path` and traverse to it."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(p)
        except OSError:
            return False
        need = stat.S_IXOTH if i < len(parts) else (stat.S_IXOTH | stat.S_IROTH)
        if st.st_uid == uid:
            need = need << 6
        elif st.st_gid == gid:
            need = need << 3
        if st.st_mode & need != need:
            return False
    return True


def find_python(uid: int = 65534, gid: int = 65534) -> str:
    """The first of this interpreter, /usr/local/bin/python3, /usr/bin/python3 that `uid` can run."""
    for cand in (sys.executable, *_CANDIDATE_PYTHONS):
        if cand and os.path.exists(cand) and _readable_by(cand, uid, gid):
            return os.path.realpath(cand)
    raise SandboxUnavailable(
        f"no Python interpreter that uid {uid} can read and execute (tried {sys.executable}, "
        f"{', '.join(_CANDIDATE_PYTHONS)}); pass Sandbox(python=...)"
    )


_CHECKED: set[tuple[int, int, str]] = set()
_SIGNAL_REASONS = {signal.SIGXCPU: "cpu_time", signal.SIGXFSZ: "file_size"}


class Sandbox:
    """Runs Python source in isolation (see the module docstring for what is enforced)."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        uid: int = 65534,
        gid: int = 65534,
        python: str | None = None,
    ):
        self.limits = limits or SandboxLimits()
        self.uid, self.gid = int(uid), int(gid)
        if self.uid == 0 or self.gid == 0:
            raise ValueError("the sandbox uid and gid must not be 0")
        self._python = python

    def python(self) -> str:
        if self._python is None:
            self._python = find_python(self.uid, self.gid)
        elif not _readable_by(self._python, self.uid, self.gid):
            raise SandboxUnavailable(f"uid {self.uid} cannot execute {self._python}")
        return self._python

    def _require_root(self) -> None:
        if os.geteuid() != 0:
            raise SandboxUnavailable(
                f"the sandbox needs root to create namespaces and drop to uid {self.uid} "
                f"(running as uid {os.geteuid()}); refusing to run code without isolation"
            )

    def check(self) -> None:
        """Raises SandboxUnavailable unless a trivial program runs fully isolated.

        A success is remembered per process for these ids and interpreter (so building one
        environment per episode does not probe each time); a failure is not."""
        self._require_root()  # on every call, like `run`
        key = (self.uid, self.gid, self.python())
        if key in _CHECKED:
            return
        result = self.run("import os; print(os.getuid())")
        if result.stdout.strip() != str(self.uid):
            raise SandboxUnavailable(f"sandbox self-test failed: {result}")
        _CHECKED.add(key)

    def run(self, source: str, *, stdin: str = "") -> SandboxResult:
        """Runs `source` as `main.py` in a fresh working directory; never raises for what it does."""
        self._require_root()
        python = self.python()
        lim = self.limits
        tmp = tempfile.mkdtemp(prefix="jaxrl_sandbox_")
        try:
            src_path = os.path.join(tmp, "main.py")
            with open(src_path, "w", encoding="utf-8") as f:
                f.write(source)
            cfg = {
                "source": src_path,
                "python": python,
                "uid": self.uid,
                "gid": self.gid,
                "timeout_s": float(lim.wall_s),
                "tmpfs_bytes": int(lim.disk_bytes),
                "tmpfs_inodes": int(lim.max_files),
                "limits": {
                    "cpu_s": int(lim.cpu_s),
                    "as_bytes": int(lim.memory_bytes),
                    "fsize_bytes": int(lim.file_size_bytes),
                    "nproc": int(lim.max_processes),
                    "nofile": int(lim.max_open_files),
                },
            }
            return self._launch(cfg, stdin, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _launch(self, cfg: dict, stdin: str, tmp: str) -> SandboxResult:
        t0 = time.monotonic()
        status_r, status_w = os.pipe()
        try:
            try:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-I",
                        "-S",
                        _LAUNCHER,
                        json.dumps({**cfg, "status_fd": status_w}),
                    ],
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(status_w,),
                    start_new_session=True,
                    env={},
                    cwd=tmp,
                )
            finally:
                os.close(status_w)
            try:
                bufs, truncated, killed_here = self._collect(proc, stdin, status_r, t0)
            except BaseException:
                os.killpg(proc.pid, signal.SIGKILL)  # never leave a program running
                raise
            finally:
                proc.wait()
                for f in (proc.stdin, proc.stdout, proc.stderr):
                    if f is not None:
                        f.close()
        finally:
            os.close(status_r)
        statuses = [json.loads(line) for line in bufs["status"].decode().splitlines() if line]
        errors = [s["setup_error"] for s in statuses if "setup_error" in s]
        if errors:
            raise SandboxUnavailable(f"sandbox isolation failed, program not run: {errors[0]}")
        final: dict = {}
        for s in statuses:  # the program's status from init, then the launcher's
            final.update(s)
        if "timed_out" not in final and not killed_here:
            raise SandboxUnavailable(
                f"sandbox launcher exited {proc.returncode} without a status: "
                + bufs["stderr"].decode(errors="replace")[-500:]
            )
        timed_out = killed_here or bool(final.get("timed_out"))
        return SandboxResult(
            stdout=bufs["stdout"].decode(errors="replace"),
            stderr=bufs["stderr"].decode(errors="replace"),
            exit_code=final.get("exit_code"),
            timed_out=timed_out,
            killed_reason=self._killed_reason(final, timed_out),
            truncated=truncated,
            cpu_s=float(final.get("cpu_s", 0.0)),
            wall_s=time.monotonic() - t0,
        )

    def _collect(self, proc, stdin: str, status_r: int, t0: float):
        """Reads stdout, stderr (each capped) and the status pipe until all close or the
        fallback deadline passes (then the launcher's process group is killed)."""
        lim = self.limits
        if stdin:  # at most one pipe buffer, so writing cannot block on a full stdout
            try:
                proc.stdin.write(stdin.encode()[:65536])
                proc.stdin.close()
            except OSError:
                pass
        bufs = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
        truncated = killed_here = False
        deadline = t0 + lim.wall_s + lim.grace_s
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            sel.register(status_r, selectors.EVENT_READ, "status")
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    os.killpg(proc.pid, signal.SIGKILL)  # launcher and init: the namespace dies
                    killed_here = True
                    break
                for key, _ in sel.select(timeout=min(remaining, 1.0)):
                    fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = bufs[key.data]
                    cap = 65536 if key.data == "status" else lim.max_output_bytes
                    keep = max(0, cap - len(buf))
                    buf += chunk[:keep]
                    truncated |= len(chunk) > keep and key.data != "status"
        return bufs, truncated, killed_here

    def _killed_reason(self, final: dict, timed_out: bool) -> str | None:
        sig = final.get("signal")
        if timed_out:
            return "timeout"
        if "exit_code" not in final:
            return "sandbox_error"  # init ended without reporting (e.g. the OOM killer)
        if sig is None:
            return None
        if sig == signal.SIGKILL and final.get("cpu_s", 0) >= self.limits.cpu_s:
            return "cpu_time"  # past the hard RLIMIT_CPU the kernel sends SIGKILL
        return _SIGNAL_REASONS.get(sig) or f"signal:{signal.Signals(sig).name}"
