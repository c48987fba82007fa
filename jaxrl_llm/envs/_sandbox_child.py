"""The sandbox launcher: run as a separate root process by `sandbox.Sandbox.run`, never imported.

    python -I -S _sandbox_child.py '<json config>'      (stdin/stdout/stderr are the program's)

It isolates, then executes the untrusted program:

1. `unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)`: a private mount
   table, a network namespace with only a downed loopback device, new PID and IPC namespaces.
2. fork: the child is PID 1 ("init") of the new PID namespace and stays root; when it dies
   the kernel kills every process left in the namespace (a `setsid` cannot escape this,
   unlike a process group). The program cannot signal or trace it (different uid).
3. init, still root: mount propagation private; the whole mount tree read-only and nosuid
   in one recursive `mount_setattr` (Linux >= 5.12); empty read-only tmpfs mounts over
   /tmp, /var/tmp, /run and /dev/shm; a size- and inode-limited tmpfs owned by the sandbox
   uid at /tmp/sandbox, the working directory; a fresh read-only `/proc` (shows only the
   sandbox's processes). `PR_SET_PDEATHSIG(SIGKILL)`: init dies with the launcher.
4. init forks the program: rlimits (CPU, address space, file size, process count, open
   files, no core files), `setgroups([])`, `setgid`, `setuid` to the unprivileged ids
   (checked not reversible), `PR_SET_NO_NEW_PRIVS`, then
   `execve(python, [python, -I, -B, main.py], env={})` in the working directory.
5. init reaps orphans until the program exits, reports its status and exits (killing the rest).

The launcher waits with a wall-clock timer; on expiry it SIGKILLs init (and with it the
namespace). JSON lines go to the status fd (closed on exec, so the program cannot write it):
`{"setup_error": "..."}` when any isolation step failed (the program is then never run: the
sandbox fails closed); `{"exit_code", "signal", "cpu_s"}` from init when the program ended;
last `{"timed_out", "wall_s"}` from the launcher.

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
MS_REC = 16384
MS_PRIVATE = 1 << 18
SYS_MOUNT_SETATTR = 442  # x86-64, arm64 and every other architecture of the unified table
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
SETUP_FAILED = 97

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()
    _check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _all_read_only() -> None:
    """Every mount of this namespace read-only and nosuid, recursively, in one system call."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    c_long = ctypes.c_long
    ret = libc.syscall(
        c_long(SYS_MOUNT_SETATTR),
        c_long(AT_FDCWD),
        ctypes.c_char_p(b"/"),
        c_long(AT_RECURSIVE),
        ctypes.byref(attr),
        c_long(ctypes.sizeof(attr)),
    )
    _check(ret, "mount_setattr(/, recursive read-only; needs Linux >= 5.12)")


# Shared scratch and runtime directories: hidden behind empty read-only tmpfs mounts, so the
# program sees neither other users' files there nor the Unix sockets they hold (connecting to a
# socket is not a write: a read-only mount alone does not stop it).
MASKED = ("/tmp", "/var/tmp", "/run", "/dev/shm")
WORK = "/tmp/sandbox"  # the working directory, as the program sees it


def _isolate_filesystem(source: bytes, cfg: dict) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    _all_read_only()
    masked = []
    for path in MASKED:
        real = os.path.realpath(path)
        if os.path.isdir(real) and real not in masked:
            _mount("tmpfs", real, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16k,mode=0755")
            masked.append(real)
    if os.path.realpath("/tmp") != "/tmp":
        raise OSError("/tmp is not a directory")
    os.mkdir(WORK, 0o700)
    opts = f"size={cfg['tmpfs_bytes']},nr_inodes={cfg['tmpfs_inodes']},mode=0700,uid={cfg['uid']},gid={cfg['gid']}"
    _mount("tmpfs", WORK, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    main = os.path.join(WORK, "main.py")
    with open(main, "wb") as f:
        f.write(source)
    os.chown(main, cfg["uid"], cfg["gid"])
    for real in masked:  # the masks themselves read-only (WORK is a mount of its own)
        flags = MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        _mount(None, real, None, flags, "size=16k,mode=0755")
    _mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


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


def _namespace_init(cfg: dict, source: bytes, report) -> None:
    """PID 1 of the sandbox: isolate, start the program, reap, report. Never returns."""
    try:
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        _isolate_filesystem(source, cfg)
    except BaseException as e:  # noqa: BLE001 - any failure means: do not run the program
        report({"setup_error": f"filesystem: {type(e).__name__}: {e}"})
        os._exit(SETUP_FAILED)
    prog = os.fork()
    if prog == 0:
        stage = "privileges"
        try:
            _drop_privileges(cfg)
            stage = "exec"
            os.chdir(WORK)
            os.execve(cfg["python"], [cfg["python"], "-I", "-B", "main.py"], {})
        except BaseException as e:  # noqa: BLE001
            report({"setup_error": f"{stage}: {type(e).__name__}: {e}"})
            os._exit(SETUP_FAILED)
    while True:  # reap orphans until the program itself exits
        pid, status, usage = os.wait4(-1, 0)
        if pid == prog:
            break
    report(
        {
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
    )
    os._exit(0)  # init exits: the kernel kills whatever the program left running


def main() -> None:
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)  # closed by execve: the program cannot forge a status

    def report(obj: dict) -> None:
        os.write(status_fd, (json.dumps(obj) + "\n").encode())

    try:
        with open(cfg["source"], "rb") as f:
            source = f.read()
        _check(
            libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC),
            "unshare(mount, network, pid, ipc namespaces)",
        )
    except Exception as e:  # noqa: BLE001
        report({"setup_error": f"{type(e).__name__}: {e}"})
        os._exit(SETUP_FAILED)

    pid = os.fork()
    if pid == 0:
        _namespace_init(cfg, source, report)

    timed_out = False

    def on_alarm(signum, frame):
        nonlocal timed_out
        timed_out = True
        os.kill(pid, signal.SIGKILL)  # init dies, the kernel kills the rest of the namespace

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout_s"])
    t0 = time.monotonic()
    os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    report({"timed_out": timed_out, "wall_s": time.monotonic() - t0})
    os._exit(0)


if __name__ == "__main__":
    main()
