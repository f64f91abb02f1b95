"""Launching an sglang server (`python -m sglang.launch_server`) for the OpenAI-compatible client
(`visa.generation.openai_api.OpenAIChatGenerator`, which talks to it over HTTP like to any other server).

The server starts on first use (so a fully cached run starts nothing), with the given Python executable
(sglang pins its own torch, so it usually lives in its own environment); its log goes to the run folder, and
it is stopped when the run ends, on Ctrl-C, on an exception and at interpreter exit. Generators whose yamls
ask for the same server (same port and settings) share one process.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from visa.core.errors import VisaError

log = logging.getLogger("visa.sglang")


def run_dir() -> Path:
    """Hydra's output folder inside a Hydra run, else the current folder (where a launched server logs)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except ImportError:
        pass
    return Path.cwd()


class SGLangServer:
    """One `python -m sglang.launch_server` process started and stopped by this program."""

    def __init__(
        self,
        model_path: str,
        tp: int = 1,
        mem_fraction: float | None = None,
        port: int = 30000,
        host: str = "127.0.0.1",
        python: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        startup_timeout: float = 1800.0,
        log_dir: str | os.PathLike | None = None,
    ):
        self.model_path, self.tp, self.mem_fraction = model_path, tp, mem_fraction
        self.port, self.host = port, host
        # Default: this interpreter (sglang installed with `pip install ".[sglang]"`).
        self.python = python or sys.executable
        if not isinstance(extra_args, (list, tuple)):
            raise VisaError("server.extra_args must be a list of strings, e.g. ['--context-length', '8192']")
        self.extra_args = [str(a) for a in extra_args]
        self.startup_timeout = startup_timeout
        self.log_dir = Path(log_dir) if log_dir else None
        self.log_path: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "sglang.launch_server", "--model-path", self.model_path]
        cmd += ["--tp", str(self.tp), "--host", self.host, "--port", str(self.port)]
        if self.mem_fraction is not None:
            cmd += ["--mem-fraction-static", str(self.mem_fraction)]
        return cmd + self.extra_args

    def signature(self) -> tuple:
        return (self.python, self.model_path, self.tp, self.mem_fraction, self.host, tuple(self.extra_args))

    def ensure_running(self, wait: bool = True) -> str:
        """Start this server, or attach to the same one already launched by this run; its /v1 URL.
        wait=False: return once started, before it is healthy (`wait_healthy`)."""
        have = _LAUNCHED.get(self.port)
        if have is not None and have is not self and have.running():
            if have.signature() != self.signature():
                raise VisaError(
                    f"port {self.port} already serves {have.model_path} launched by this run; give "
                    f"server.port a different value for {self.model_path}"
                )
            return have.url
        _LAUNCHED[self.port] = self
        self.start(wait)
        return self.url

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, wait: bool = True) -> None:
        """Start the server and wait until its /health answers 200 (at most `startup_timeout` seconds).

        Call it from the thread that lives as long as the server should: the server gets SIGTERM when the
        thread that started it ends (Linux's parent-death signal is per thread)."""
        if self.running():
            return
        if _port_open(self.host, self.port):
            raise VisaError(
                f"port {self.host}:{self.port} is already in use; attach to that server with url={self.url} "
                "and server=null, or pick another server.port"
            )
        folder = self.log_dir or run_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"sglang-{self.port}.log"
        log_file = open(self.log_path, "ab")
        log.info("starting sglang: %s (log: %s)", " ".join(self.command()), self.log_path)
        try:
            # Own process group: Ctrl-C in the terminal reaches only this program, which then stops the
            # whole server (sglang runs several processes) with one signal to the group.
            self.process = subprocess.Popen(
                self.command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as e:
            raise VisaError(
                f"cannot start sglang with server.python={self.python!r}: {e.strerror}; point "
                "server.python at the python of the environment where sglang is installed"
            ) from e
        finally:
            log_file.close()  # the child holds its own descriptor
        atexit.register(self.stop)
        if wait:
            self.wait_healthy()

    def wait_healthy(self) -> None:
        """Wait until a server started with wait=False is healthy; stop it if it does not get there."""
        if self.process is None:
            return  # not started by this object (attached to the same server launched by another)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        assert self.process is not None, "start() launches the process first"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise VisaError(
                    f"sglang exited with status {code} while starting ({self._last_log_line()}); "
                    f"see {self.log_path}"
                )
            try:
                with urlopen(f"{self.base_url}/health", timeout=5.0) as response:
                    if response.status == 200:
                        log.info("sglang is up at %s", self.url)
                        return
            except (URLError, OSError):
                pass  # not listening yet, or not ready (HTTP errors are URLErrors too)
            time.sleep(1.0)
        raise VisaError(
            f"sglang at {self.base_url} was not healthy after server.startup_timeout="
            f"{self.startup_timeout:g} s; see {self.log_path} (raise the limit for large models)"
        )

    def _last_log_line(self) -> str:
        if self.log_path is None:
            return ""
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        return f"last log line: {lines[-1][:200]}" if lines else "empty log"

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace` seconds. Safe to call twice."""
        atexit.unregister(self.stop)
        if _LAUNCHED.get(self.port) is self:
            del _LAUNCHED[self.port]
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        log.info("stopping sglang at %s", self.base_url)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when this program dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


# Servers launched by this process, by port: generators that ask for the same server share it.
_LAUNCHED: dict[int, SGLangServer] = {}
