"""The sandbox launcher: run as a separate root process by `sandbox.Sandbox.run`, never imported.

    python -I -S _sandbox_child.py '<json config>'      (stdin/stdout/stderr are the program's)

It isolates, then executes the untrusted program:

1. `unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)`: a private mount
   table, a network namespace with only a downed loopback device, a new PID namespace.
2. fork: the child is PID 1 of the new PID namespace, so when it dies the kernel kills
   every process it left behind (a `setsid` cannot escape this, unlike a process group).
3. In the child, still root: mount propagation private; a fresh `/proc` (shows only the
   sandbox's processes); a size- and inode-limited tmpfs, owned by the sandbox uid, as the
   working directory; every other mount remounted read-only and nosuid.
4. rlimits (CPU, address space, file size, process count, open files, no core files),
   `setgroups([])`, `setgid`, `setuid` to the unprivileged ids, checked not reversible;
   `PR_SET_NO_NEW_PRIVS`; `PR_SET_PDEATHSIG(SIGKILL)` so the program dies with this launcher.
5. `execve(python, [python, -I, -B, main.py], env={})`.

The parent half waits with a wall-clock timer; on expiry it SIGKILLs PID 1 (and with it the
namespace). It writes JSON lines to the status fd: `{"setup_error": "..."}` when any isolation
step failed (the program is then never run: the sandbox fails closed), and last
`{"exit_code", "signal", "timed_out", "cpu_s", "wall_s"}`.

Imports only the standard library (it runs with -I -S, outside the package).
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
SETUP_FAILED = 97

_OPT_FLAGS = {
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()
    _check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1 : i + 4].isdigit():
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def _mounts() -> list[tuple[str, int]]:
    """(mount point, per-mount flags to keep) for every mount of this namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            flags = 0
            for opt in fields[5].split(","):
                flags |= _OPT_FLAGS.get(opt, 0)
            out.append((_unescape(fields[4]), flags))
    return out


def _isolate_filesystem(work: str, source: bytes, cfg: dict) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    opts = f"size={cfg['tmpfs_bytes']},nr_inodes={cfg['tmpfs_inodes']},mode=0700,uid={cfg['uid']},gid={cfg['gid']}"
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    main = os.path.join(work, "main.py")
    with open(main, "wb") as f:
        f.write(source)
    os.chown(main, cfg["uid"], cfg["gid"])
    for target, flags in _mounts():
        if target == work:
            continue
        # A stacked mount point repeats; remounting the visible one twice is harmless.
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)


def _drop_privileges(cfg: dict) -> None:
    lim = cfg["limits"]
    for res, value in (
        (resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1)),
        (resource.RLIMIT_AS, (lim["as_bytes"], lim["as_bytes"])),
        (resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"])),
        (resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"])),
        (resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"])),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(res, value)
    os.setgroups([])
    os.setgid(cfg["gid"])
    os.setuid(cfg["uid"])
    if os.getuid() != cfg["uid"] or os.geteuid() != cfg["uid"] or os.getegid() != cfg["gid"]:
        raise OSError("uid/gid did not change")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise OSError("could regain uid 0 after dropping privileges")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)  # closed by execve: the program cannot forge a status

    def report(obj: dict) -> None:
        os.write(status_fd, (json.dumps(obj) + "\n").encode())

    work = cfg["work"]
    try:
        with open(cfg["source"], "rb") as f:
            source = f.read()
        _check(
            libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC),
            "unshare(mount, network, pid, ipc namespaces)",
        )
    except Exception as e:  # noqa: BLE001 - any failure means: do not run the program
        report({"setup_error": f"{type(e).__name__}: {e}"})
        os._exit(SETUP_FAILED)

    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace
        stage = "filesystem"
        try:
            _isolate_filesystem(work, source, cfg)
            stage = "privileges"
            _drop_privileges(cfg)
            stage = "exec"
            os.chdir(work)
            os.execve(cfg["python"], [cfg["python"], "-I", "-B", "main.py"], {})
        except BaseException as e:  # noqa: BLE001
            report({"setup_error": f"{stage}: {type(e).__name__}: {e}"})
            os._exit(SETUP_FAILED)

    timed_out = False

    def on_alarm(signum, frame):
        nonlocal timed_out
        timed_out = True
        os.kill(pid, signal.SIGKILL)  # PID 1 dies, the kernel kills the rest of the namespace

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    t0 = time.monotonic()
    _, status, usage = os.wait4(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    report(
        {
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "timed_out": timed_out,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_s": time.monotonic() - t0,
        }
    )
    os._exit(0)


if __name__ == "__main__":
    main()
