"""Launching a server: command line, health wait with a time limit, log in the run folder, stop at the end.

The launched program is a stand-in `sglang.launch_server` module (written to tmp_path) that serves the fake
OpenAI API on the port it is given, or crashes, or never becomes healthy.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.fake_openai_server import FakeOpenAIServer

from visa.core.errors import VisaError
from visa.generation.openai_api import OpenAIChatGenerator
from visa.generation.sglang import SGLangServer
from visa.method.prompts import Prompt

TESTS = Path(__file__).resolve().parent

FAKE_LAUNCH_SERVER = """
import argparse, os, sys, time
from helpers.fake_openai_server import FakeOpenAIServer

print("args:", " ".join(sys.argv[1:]), flush=True)
parser = argparse.ArgumentParser()
parser.add_argument("--model-path", required=True)
parser.add_argument("--tp", type=int, default=1)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=30000)
parser.add_argument("--mem-fraction-static", type=float)
args, _ = parser.parse_known_args()
with open(os.environ["FAKE_SGLANG_PIDFILE"], "w") as f:
    f.write(str(os.getpid()))
mode = os.environ.get("FAKE_SGLANG_MODE", "ok")
if mode == "crash":
    print("RuntimeError: CUDA out of memory", flush=True)
    sys.exit(3)
time.sleep(600 if mode == "hang" else 0.3)  # loading the model
FakeOpenAIServer(port=args.port)._httpd.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_dead(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def fake_sglang(tmp_path, monkeypatch):
    """Puts the stand-in sglang on PYTHONPATH; returns the file the launched server writes its pid to."""
    package = tmp_path / "fakeenv" / "sglang"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "launch_server.py").write_text(textwrap.dedent(FAKE_LAUNCH_SERVER))
    # and this checkout, so that the subprocess imports the code under test, not another install
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package.parent), str(TESTS), str(TESTS.parent)]))
    pidfile = tmp_path / "server.pid"
    monkeypatch.setenv("FAKE_SGLANG_PIDFILE", str(pidfile))
    monkeypatch.chdir(tmp_path)  # outside a Hydra run, the log goes to the current folder
    return pidfile


def launched(port: int, **server) -> object:
    settings = {
        "model_path": "org/model",
        "port": port,
        "python": sys.executable,
        "startup_timeout": 60,
        **server,
    }
    return OpenAIChatGenerator(model="org/model", server=SGLangServer(**settings), retry_backoff=0.01)


def test_launch_serve_and_stop(fake_sglang, tmp_path):
    port = free_port()
    gen = launched(port, tp=2, mem_fraction=0.7, extra_args=["--context-length", "4096"])
    assert not fake_sglang.exists()  # nothing starts before the first request
    try:
        assert gen.generate([Prompt("hello")]) == ["Reply to: hello"]
        pid = int(fake_sglang.read_text())
        assert alive(pid) and gen.endpoint() == f"http://127.0.0.1:{port}/v1"
    finally:
        gen.close()
    assert wait_dead(pid)
    log = (tmp_path / f"sglang-{port}.log").read_text()
    assert (
        f"args: --model-path org/model --tp 2 --host 127.0.0.1 --port {port} --mem-fraction-static 0.7 "
        "--context-length 4096" in log
    )


def test_generators_asking_for_the_same_server_share_it(fake_sglang, tmp_path):
    port = free_port()
    a, b = launched(port), launched(port)
    try:
        assert a.endpoint() == b.endpoint()
        with pytest.raises(VisaError, match=f"port {port} already serves org/model"):
            launched(port, tp=4).endpoint()
    finally:
        a.close()
        b.close()
    assert (tmp_path / f"sglang-{port}.log").read_text().count("args:") == 1


def test_a_server_that_dies_while_starting_is_reported_with_its_log(fake_sglang, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_SGLANG_MODE", "crash")
    port = free_port()
    with pytest.raises(VisaError, match=r"exited with status 3 .*CUDA out of memory.*sglang-\d+\.log"):
        launched(port).generate([Prompt("hello")])


def test_a_server_that_never_gets_healthy_is_stopped_after_the_time_limit(fake_sglang, monkeypatch):
    monkeypatch.setenv("FAKE_SGLANG_MODE", "hang")
    with pytest.raises(VisaError, match=r"not healthy after server.startup_timeout=2 s"):
        launched(free_port(), startup_timeout=2).generate([Prompt("hello")])
    assert wait_dead(int(fake_sglang.read_text()))


def test_a_port_in_use_points_to_attaching():
    with FakeOpenAIServer() as running:
        with pytest.raises(VisaError, match=rf"already in use; attach to that server with url={running.url}"):
            launched(running.port).generate([Prompt("hello")])


def test_a_missing_python_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VisaError, match="server.python='/nonexistent/python'"):
        launched(free_port(), python="/nonexistent/python").generate([Prompt("hello")])


@pytest.mark.parametrize("ending", ["exit", "exception"])
def test_the_server_stops_when_the_program_ends(fake_sglang, ending):
    """No close(): the server is stopped at interpreter exit, also after an uncaught exception."""
    script = f"""
import sys
from visa.generation.openai_api import OpenAIChatGenerator
from visa.generation.sglang import SGLangServer
from visa.method.prompts import Prompt
server = SGLangServer("org/model", port={free_port()}, python=sys.executable, startup_timeout=60)
gen = OpenAIChatGenerator(model="org/model", server=server)
print(gen.generate([Prompt("hello")]))
if "{ending}" == "exception":
    raise RuntimeError("boom")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "Reply to: hello" in done.stdout
    assert (done.returncode != 0) == (ending == "exception")
    assert wait_dead(int(fake_sglang.read_text()))
