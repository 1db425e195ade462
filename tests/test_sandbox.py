"""The sandbox that runs model-generated code: correct and wrong programs, and hostile ones."""

from __future__ import annotations

import os
import textwrap

import pytest

from dftnb.sandbox import run_program


def run(code: str, **kwargs):
    return run_program(textwrap.dedent(code), **kwargs)


def test_correct_program_passes_and_wrong_one_fails():
    good = run(
        """
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        print("ok")
        """
    )
    assert good.passed and good.reason == "passed" and good.stdout.strip() == "ok"
    bad = run(
        """
        def add(a, b):
            return a - b
        assert add(2, 3) == 5, "add is wrong"
        """
    )
    assert not bad.passed and "AssertionError: add is wrong" in bad.reason
    syntax = run("def f(:\n    pass\n")
    assert not syntax.passed and "SyntaxError" in syntax.reason


def test_infinite_loop_is_killed_at_the_timeout():
    res = run("while True:\n    pass\n", timeout=1.0)
    assert not res.passed and "timed out" in res.reason
    assert res.seconds < 8


def test_memory_bomb_hits_the_address_space_limit():
    res = run(
        """
        chunks = []
        while True:
            chunks.append(bytearray(50 * 2**20))
        """,
        memory_mb=256,
        timeout=20,
    )
    assert not res.passed and "MemoryError" in res.reason


@pytest.mark.parametrize(
    "code,blocked",
    [
        ("import os\nwhile True:\n    os.fork()\n", "os.fork"),
        ("import subprocess\nsubprocess.run(['true'])\n", "not allowed"),
        ("import os\nos.system('true')\n", "os.system"),
        ("import ctypes\nctypes.CDLL(None).fork()\n", "ctypes"),
        ("import multiprocessing\n", "multiprocessing"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n", "resource.setrlimit"),
    ],
)
def test_fork_bomb_and_process_creation_are_blocked(code, blocked):
    res = run(code, timeout=10)
    assert not res.passed and "sandbox" in res.reason and blocked in res.reason


def test_forks_blocked_even_when_the_program_swallows_the_error():
    res = run(
        """
        import os
        forked = 0
        for _ in range(1000):
            try:
                os.fork()
                forked += 1
            except PermissionError:
                pass
        assert forked == 0
        """,
        timeout=10,
    )
    assert res.passed  # every fork attempt was refused, so no child process ever existed


def test_writes_outside_the_working_directory_are_blocked(tmp_path):
    outside = tmp_path / "escape.txt"
    keep = tmp_path / "keep.txt"
    keep.write_text("important")
    res = run(f"open({str(outside)!r}, 'w').write('pwned')\n")
    assert not res.passed and "outside the working directory" in res.reason
    assert not outside.exists()
    for code in (
        f"import os\nos.remove({str(keep)!r})\n",
        f"import os\nos.rename({str(keep)!r}, 'stolen.txt')\n",
        f"import pathlib\npathlib.Path({str(outside)!r}).write_text('x')\n",
        f"import os\nos.symlink({str(keep)!r}, 'link')\nopen('link', 'w').write('x')\n",
        f"import os\nfd = os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)\n",
        f"import os\nos.chdir({str(tmp_path)!r})\nopen('escape.txt', 'w')\n",
        f"import os\nd = os.open({str(tmp_path)!r}, os.O_RDONLY)\nos.open('escape.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d)\n",
        f"import os\nos.link({str(keep)!r}, 'hard')\n",
    ):
        res = run(code)
        assert not res.passed and "sandbox" in res.reason, code
    assert keep.read_text() == "important" and not outside.exists()
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_writes_inside_the_working_directory_are_allowed():
    res = run(
        """
        import os, tempfile
        with open("notes.txt", "w") as fh:
            fh.write("hello")
        assert open("notes.txt").read() == "hello"
        with tempfile.NamedTemporaryFile("w", delete=False) as fh:
            fh.write("x")
        os.remove("notes.txt")
        """
    )
    assert res.passed, res.reason


def test_early_exit_is_not_a_pass():
    for code in ("import sys\nsys.exit(0)\nassert False\n", "import os\nos._exit(0)\nassert False\n", "exit()\n"):
        res = run(code)
        assert not res.passed and ("exit" in res.reason), (code, res.reason)


def test_huge_output_hits_the_file_size_limit():
    res = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", file_mb=1, timeout=20)
    # Python ignores SIGXFSZ, so the limit surfaces as EFBIG ("File too large") in the program
    assert not res.passed and ("File too large" in res.reason or "file size limit" in res.reason)
