"""The suite's own guard (tests/conftest.py): a test that leaves a thread or a child process
running fails, and one that cleans up passes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

LEAKY = '''
import subprocess, threading

def test_leaves_a_thread():
    stop = threading.Event()
    threading.Thread(target=stop.wait, args=(30,), name="forgotten-worker", daemon=True).start()

def test_leaves_a_child():
    subprocess.Popen(["sleep", "30"])

def test_cleans_up():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, args=(30,), daemon=True)
    worker.start()
    child = subprocess.Popen(["sleep", "30"])
    stop.set(); worker.join()
    child.kill(); child.wait()
'''


def test_a_test_leaving_a_thread_or_a_child_process_fails(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "SO3KRATES_TEST_LEFTOVER_GRACE_S": "1"})
    out = run.stdout
    assert "forgotten-worker" in out and "sleep 30" in out, out[-3000:]
    assert "2 errors" in out and "3 passed" in out, out[-3000:]  # the errors are the two leaky tests' teardowns
