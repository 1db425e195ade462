"""Run untrusted, model-generated Python in a separate, resource-limited process (HumanEval, DESIGN.md §8-9).

Each program runs in a fresh ``python -I -B`` interpreter (isolated mode: no user site, no ``PYTHON*`` variables;
no bytecode writes), never in a fork of the calling process. Layers, each covering what the others miss:

* **Resource limits** (``resource.setrlimit`` in ``preexec_fn``): address space (``RLIMIT_AS``, memory bombs end
  in ``MemoryError``), CPU seconds (``RLIMIT_CPU``, SIGXCPU), file size (``RLIMIT_FSIZE``), no core dumps, and
  ``RLIMIT_NPROC``. The kernel does not apply ``RLIMIT_NPROC`` to root (CAP_SYS_RESOURCE), and a root process
  may raise its own hard limits, so the next layer is what stops forks and limit changes for root.
* **Audit hook** (``sys.addaudithook``, PEP 578, installed before the program runs and impossible to remove):
  refuses process creation (``os.fork``, ``os.forkpty``, ``os.system``, ``os.exec*``, ``os.spawn*``,
  ``os.posix_spawn``, ``subprocess.Popen``), signals to other processes, sockets, ``ctypes`` and
  ``resource.setrlimit``; refuses importing ``_posixsubprocess``, ``ctypes``, ``multiprocessing`` and ``pty``;
  refuses opening a file for writing, and removing, renaming, linking, chmod-ing or creating anything, outside the
  program's temporary working directory (paths resolved with ``realpath``, so symlinks do not escape it), and
  ``os.open`` of directories outside it (their descriptors would let ``dir_fd=`` calls escape). A refused
  operation raises ``PermissionError("sandbox: ...")`` inside the program.
* **Process group**: the child starts its own session (``start_new_session=True``); on the wall-clock timeout the
  whole group is killed with SIGKILL.
* **Completion token**: a random token is sent on stdin and printed by the harness only after the program ran to
  its end, so ``exit(0)`` or ``os._exit(0)`` before the tests finish is a failure, not a pass.

Limits of the design: the hook guards against accidental and ordinary hostile code (loops, allocation, forks,
file writes); a program that deliberately introspects the harness's frames could still find the token, and the
network is cut only at the Python socket layer. Run untrusted code on a disposable machine as well.
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The harness executed by the child interpreter: argv[1] = program file; first stdin line = completion token.
_HARNESS = r'''
import os, sys, traceback
def _install_guard(root):
    realpath, join, getcwd, fsdecode, isdir = os.path.realpath, os.path.join, os.getcwd, os.fsdecode, os.path.isdir
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    blocked = frozenset((
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
        "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "os.setuid", "sys.remote_exec",
    ))
    blocked_modules = frozenset(("_posixsubprocess", "ctypes", "_ctypes", "multiprocessing", "pty"))
    path_events = {
        "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
        "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
        "os.chflags": (0,), "os.lchflags": (0,), "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,),
        "os.setxattr": (0,), "os.removexattr": (0,),
    }

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
                raise PermissionError(f"sandbox: writing {fsdecode(path)!r} outside the working directory is not allowed")
            if mode is None and not isinstance(path, int) and not inside(path) and isdir(path):
                # a descriptor of an outside directory would let dir_fd= calls write there (the event omits dir_fd)
                raise PermissionError(f"sandbox: os.open of directory {fsdecode(path)!r} is not allowed")
        elif event in blocked:
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event == "import" and args[0] in blocked_modules:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        elif event in path_events:
            for i in path_events[event]:
                if i < len(args) and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the working directory is not allowed")

    sys.addaudithook(hook)

def _main():
    token = sys.stdin.readline().strip().encode()
    path = sys.argv[1]
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    code = compile(source, "program.py", "exec")
    write, stdout_fd = os.write, 1
    _install_guard(os.path.realpath(os.getcwd()))
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as err:
        sys.stderr.write(f"SandboxExit: the program called exit({err.code!r}) before its tests finished\n")
        os._exit(3)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    write(stdout_fd, b"\n" + token + b"\n")
    os._exit(0)

_main()
'''


@dataclass
class ExecutionResult:
    """Outcome of one sandboxed run: ``passed`` only if the program ran to its end; ``reason`` says why not."""

    passed: bool
    reason: str
    returncode: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int):
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))  # not enforced for root: the audit hook blocks forks

    return apply


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _kill_group(proc: subprocess.Popen) -> None:
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def run_program(
    source: str,
    timeout: float = 5.0,
    memory_mb: int = 1024,
    file_mb: int = 16,
    python: str | None = None,
) -> ExecutionResult:
    """Run ``source`` in the sandbox described in the module docstring and report pass/fail with a reason.

    ``timeout`` is wall-clock seconds (``RLIMIT_CPU`` is set to its ceiling plus one); ``memory_mb`` caps the
    address space, ``file_mb`` the size of any file written. Never raises for anything the program does.
    """
    if timeout <= 0 or memory_mb <= 0 or file_mb <= 0:
        raise ValueError(f"timeout, memory_mb and file_mb must be > 0, got {timeout}, {memory_mb}, {file_mb}.")
    root = Path(tempfile.mkdtemp(prefix="dftnb-sandbox-"))
    work = root / "work"
    work.mkdir()
    program = root / "program.py"  # outside work/: the program cannot rewrite itself or its output files
    program.write_text(source, encoding="utf-8")
    out_path, err_path = root / "stdout.txt", root / "stderr.txt"
    token = secrets.token_hex(16)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    start = time.perf_counter()
    proc = None
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-B", "-c", _HARNESS, str(program)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=work,
                env=env,
                preexec_fn=_limits(memory_mb * 2**20, int(timeout) + 1, file_mb * 2**20),
                start_new_session=True,
                close_fds=True,
            )
            try:
                proc.communicate(input=(token + "\n").encode(), timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)  # also reaps anything left in the group when the program ended normally
        seconds = time.perf_counter() - start
        stdout, stderr = _tail(out_path), _tail(err_path)
        rc = proc.returncode
        if timed_out:
            reason = f"timed out after {timeout:g} s"
        elif rc == 0 and token in stdout.splitlines()[-1:]:
            return ExecutionResult(True, "passed", rc, seconds, stdout.rsplit(token, 1)[0].rstrip("\n"), stderr)
        elif rc == 0:
            reason = "the program exited before its tests finished"
        elif rc == -signal.SIGXCPU:
            reason = "CPU time limit exceeded"
        elif rc == -signal.SIGXFSZ:
            reason = f"file size limit ({file_mb} MiB) exceeded"
        elif rc < 0:
            reason = f"killed by signal {signal.Signals(-rc).name}"
        else:
            reason = _last_line(stderr) or f"exit status {rc}"
        return ExecutionResult(False, reason, rc, seconds, stdout, stderr)
    except OSError as err:  # the sandbox itself could not run: report, never raise into the caller
        if proc is not None:
            _kill_group(proc)
        return ExecutionResult(False, f"sandbox error: {err}", None, time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)
