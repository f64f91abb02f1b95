"""Generation through an sglang server, spoken to over its OpenAI-compatible HTTP API.

Two ways to get a server:
- attach: `url: http://HOST:PORT/v1` of a server that is already running;
- launch: `launch: true` with `server: {model_path, tp, mem_fraction, port, python, extra_args, ...}`; the
  server starts on first use (so a fully cached run starts nothing), with the given Python executable
  (sglang pins its own torch, so it usually lives in its own environment), its log goes to the run folder,
  and it is stopped when the run ends, on Ctrl-C, on an exception and at interpreter exit.

Requests: up to `max_concurrency` in flight (asyncio + aiohttp), results handed to the stage cache as they
complete (`stream`). Images go as base64 `data:` URLs before the text, and the text puts the fixed
instructions first and the question last, so that the server's prefix cache shares the image and the
instructions between the questions about one item. Videos are sent as frames sampled at `video_fps`.

Faults: refused connections, timeouts, dropped connections, HTTP 5xx and 429 are retried with exponential
backoff and jitter, `max_retries` times; then the run stops with a message naming the URL. Other HTTP
errors (a wrong model name, a bad request) stop the run at once. A reply without a text (malformed JSON,
no choices) becomes the empty string, which the pipeline treats like an unparsable answer, and is counted
in `malformed`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import functools
import io
import json
import logging
import mimetypes
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import urlopen

import aiohttp

from visa.errors import VisaError
from visa.prompts import Prompt

log = logging.getLogger("visa.sglang")

# Formats every sglang vision model reads as they are; anything else is re-encoded as PNG.
_SENT_AS_IS = {"image/jpeg", "image/png", "image/webp", "image/gif"}
_MAX_BACKOFF = 60.0  # seconds: the longest wait between two tries of one request
_RETRY_STATUS = {429, 500, 502, 503, 504}
VIDEO_MAX_PIXELS = 360 * 420  # per frame, when max_pixels is not set (the method's video setting)


# -- the launcher ---------------------------------------------------------------------------------------


def run_dir() -> Path:
    """Hydra's output folder inside a Hydra run, else the current folder (where a launched server logs)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except ImportError:
        pass
    return Path.cwd()


_SERVER_KEYS = ("model_path", "tp", "mem_fraction", "port", "host", "python", "extra_args", "startup_timeout")


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
        self.extra_args = [str(a) for a in extra_args]
        self.startup_timeout = startup_timeout
        self.log_dir = Path(log_dir) if log_dir else None
        self.log_path: Path | None = None
        self.process: subprocess.Popen | None = None

    @classmethod
    def from_config(cls, server: dict | None, model: str) -> SGLangServer:
        server = dict(server or {})
        unknown = sorted(set(server) - set(_SERVER_KEYS))
        if unknown:
            raise VisaError(
                f"server.{unknown[0]} is not a server setting; valid keys: {', '.join(_SERVER_KEYS)}"
            )
        server.setdefault("model_path", model)
        if not isinstance(server.get("extra_args") or [], (list, tuple)):
            raise VisaError("server.extra_args must be a list of strings, e.g. ['--context-length', '8192']")
        return cls(**{k: v for k, v in server.items() if v is not None or k == "mem_fraction"})

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

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and wait until its /health answers 200 (at most `startup_timeout` seconds)."""
        if self.running():
            return
        if _port_open(self.host, self.port):
            raise VisaError(
                f"port {self.host}:{self.port} is already in use; attach to that server with url={self.url} "
                "and launch: false, or pick another server.port"
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
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
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
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        return f"last log line: {lines[-1][:200]}" if lines else "empty log"

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace` seconds. Safe to call twice."""
        atexit.unregister(self.stop)
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


def _shared_server(wanted: SGLangServer) -> SGLangServer:
    have = _LAUNCHED.get(wanted.port)
    if have is not None and have.running():
        if have.signature() != wanted.signature():
            raise VisaError(
                f"port {wanted.port} already serves {have.model_path} launched by this run; give "
                f"server.port a different value for {wanted.model_path}"
            )
        return have
    _LAUNCHED[wanted.port] = wanted
    wanted.start()
    return wanted


# -- the client -----------------------------------------------------------------------------------------


class SGLangGenerator:
    """A chat model (text or vision-language) behind an sglang server; see the module docstring."""

    def __init__(
        self,
        model: str,
        url: str | None = None,
        launch: bool = False,
        server: dict | None = None,
        max_concurrency: int = 64,
        request_timeout: float = 600.0,
        max_retries: int = 5,
        retry_backoff: float = 1.0,
        batch_size: int = 64,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        system_prompt: str | None = None,
        uses_context: bool = False,
        seed: int = 0,
        video_fps: float = 3.0,
        max_frames: int = 64,
        max_pixels: int | None = None,
    ):
        if launch and url:
            raise VisaError(
                f"url={url} and launch: true exclude each other: attach to a server or launch one"
            )
        if not launch and not url:
            raise VisaError(
                "backend=sglang needs url=http://HOST:PORT/v1 of a running server, or launch: true with "
                "server settings (see docs/sglang.md)"
            )
        if url and urlparse(url).scheme not in ("http", "https"):
            raise VisaError(f"url={url!r} is not an http(s) URL; expected e.g. http://127.0.0.1:30000/v1")
        if max_concurrency < 1 or max_retries < 0:
            raise VisaError(
                f"max_concurrency={max_concurrency} must be >= 1 and max_retries={max_retries} >= 0"
            )
        self.model, self.url = model, url.rstrip("/") if url else None
        self.launch = launch
        self.server_settings = SGLangServer.from_config(server, model) if launch else None
        self.server: SGLangServer | None = None
        self.max_concurrency, self.request_timeout = max_concurrency, request_timeout
        self.max_retries, self.retry_backoff = max_retries, retry_backoff
        self.batch_size = batch_size  # only used by `generate` callers that batch; requests are per prompt
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.seed = seed
        self.system_prompt, self.uses_context = system_prompt, uses_context
        self.video_fps, self.max_frames, self.max_pixels = video_fps, max_frames, max_pixels
        self.malformed = 0  # replies without a text, returned as ""
        self.retried = 0  # tries that failed and were repeated

    def identity(self) -> dict:
        """All that changes the replies; not the URL or the server's parallelism."""
        return {
            "generator": "sglang-chat",
            "model": Path(self.model).name if Path(self.model).exists() else self.model,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "system_prompt": self.system_prompt,
            "uses_context": self.uses_context,
            "seed": self.seed if self.temperature > 0 else None,
            "video": {"fps": self.video_fps, "max_frames": self.max_frames},
            "max_pixels": self.max_pixels,
        }

    # -- server ---------------------------------------------------------------------------------------------
    def endpoint(self) -> str:
        """The /v1 URL; launches the server on first call when `launch: true`."""
        if self.launch:
            if self.server is None or not self.server.running():
                self.server = _shared_server(self.server_settings)
            return self.server.url
        return self.url

    def close(self) -> None:
        """Stop a server this generator launched (the run is over)."""
        if self.server is not None:
            self.server.stop()
            _LAUNCHED.pop(self.server.port, None)
            self.server = None

    # -- requests -------------------------------------------------------------------------------------------
    def messages(self, prompt: Prompt) -> list[dict]:
        """Chat messages: media parts first, then the prompt text (instructions first, question last)."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        if not prompt.media:
            return [*system, {"role": "user", "content": prompt.text}]
        if self.uses_context:
            if not prompt.context:
                raise VisaError(
                    f"uses_context: true but the prompt for {prompt.media[0]} has no description to read"
                )
            text = f"Description of the {prompt.media_kind}: {prompt.context}\n\n{prompt.text}"
            return [*system, {"role": "user", "content": text}]
        parts = [{"type": "image_url", "image_url": {"url": url}} for url in self._media_urls(prompt)]
        return [*system, {"role": "user", "content": [*parts, {"type": "text", "text": prompt.text}]}]

    def _media_urls(self, prompt: Prompt) -> list[str]:
        if prompt.media_kind == "video":
            from visa.data.video import sample_fps  # only video runs need the video reader

            urls = []
            for path in prompt.media:
                pixels = self.max_pixels or VIDEO_MAX_PIXELS
                frames = sample_fps(path, self.video_fps, pixels, self.max_frames)
                urls += [_frame_url(f) for f in frames]
            return urls
        return [_image_url(path, self.max_pixels) for path in prompt.media]

    def request_body(self, prompt: Prompt) -> dict:
        body = {
            "model": self.model,
            "messages": self.messages(prompt),
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if self.temperature > 0:
            body["seed"] = self.seed
        return body

    def _reply_text(self, url: str, body: str) -> str:
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            self.malformed += 1
            if self.malformed <= 3:
                log.warning("malformed reply from %s (kept as an empty answer): %.200r", url, body)
            return ""
        return content.strip()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter (so that many failed requests do not come back all at once)."""
        delay = min(_MAX_BACKOFF, self.retry_backoff * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after:
            try:
                delay = max(delay, min(_MAX_BACKOFF, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: keep the backoff
        return delay

    async def _one(
        self, client: aiohttp.ClientSession, url: str, index: int, prompt: Prompt
    ) -> tuple[int, str]:
        if prompt.media and not self.uses_context:
            body = await asyncio.to_thread(self.request_body, prompt)  # reading and encoding pixels
        else:
            body = self.request_body(prompt)
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                async with client.post(f"{url}/chat/completions", json=body) as response:
                    status, text = response.status, await response.text(errors="replace")
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # refused, timed out, dropped, bad HTTP
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if status == 200:
                    return index, self._reply_text(url, text)
                if status not in _RETRY_STATUS:
                    raise VisaError(
                        f"{url}/chat/completions answered HTTP {status} for model {self.model!r}: "
                        f"{text.strip()[:200]!r}; check model= against {url}/models"
                    )
                last = f"HTTP {status}"
            if attempt < self.max_retries:
                self.retried += 1
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise VisaError(
            f"{url}/chat/completions failed {self.max_retries + 1} times (last: {last}); check that the "
            f"server is up and reachable, or raise max_retries / request_timeout={self.request_timeout:g}"
        )

    async def _run(self, url: str, prompts: list[Prompt], put) -> None:
        """Keep up to max_concurrency requests in flight; hand each reply to `put` as it completes."""
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, connect=min(self.request_timeout, 30.0))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            todo = iter(enumerate(prompts))
            in_flight: set[asyncio.Task] = set()

            def refill() -> None:
                # A sliding window, not one task per prompt: 300k prompts would hold 300k encoded images.
                for index, prompt in todo:
                    in_flight.add(asyncio.create_task(self._one(client, url, index, prompt)))
                    if len(in_flight) >= self.max_concurrency:
                        return

            refill()
            try:
                while in_flight:
                    done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    in_flight.difference_update(done)
                    for task in done:
                        put(task.result())  # a request that failed for good stops the stage here
                    refill()
            finally:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

    def stream(self, prompts: list[Prompt]) -> Iterator[tuple[int, str]]:
        """(index, reply) pairs in completion order.

        The requests run on an event loop in a helper thread; this thread only waits on a queue, so Ctrl-C
        and errors stop the stage at once, and closing the iterator cancels the requests in flight.
        """
        if not prompts:
            return
        url = self.endpoint()
        results: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        done = object()

        def work() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._run(url, prompts, results.put))
            except BaseException as e:  # handed to the consuming thread
                results.put(e)
            finally:
                loop.run_until_complete(loop.shutdown_default_executor())
                results.put(done)

        thread = threading.Thread(target=work, name="visa-sglang", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    item = results.get(timeout=0.2)  # short waits keep Ctrl-C responsive
                except queue.Empty:
                    continue
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if thread.is_alive():
                # Cancel every task on the loop: the requests in flight are dropped, the rest never start.
                loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
                thread.join(timeout=10.0)
            if not thread.is_alive():
                loop.close()

    def generate(self, prompts: list[Prompt]) -> list[str]:
        """One reply per prompt, in order (all requests in flight at once, up to max_concurrency)."""
        out: list[str | None] = [None] * len(prompts)
        for index, text in self.stream(prompts):
            out[index] = text
        return out  # type: ignore[return-value]


# The questions about one item are sent one after another: encode each image once for all of them.
@functools.lru_cache(maxsize=32)
def _image_url(path: str, max_pixels: int | None) -> str:
    """A data: URL of the image file; re-encoded only when its format is unusual or it is too large."""
    mime = mimetypes.guess_type(path)[0]
    try:
        if mime in _SENT_AS_IS and not max_pixels:
            data = Path(path).read_bytes()
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        from visa.data.media import load_image

        image = load_image(path)
        if max_pixels:
            from visa.data.video import fit_pixels

            image = fit_pixels(image, max_pixels)
        return _frame_url(image)
    except FileNotFoundError as e:
        raise VisaError(f"image not found: {path}; check the dataset's paths") from e


def _frame_url(frame: Any) -> str:
    """A data: URL (JPEG) of a PIL image or an HxWx3 uint8 array."""
    from PIL import Image

    if not isinstance(frame, Image.Image):
        frame = Image.fromarray(frame)
    buf = io.BytesIO()
    frame.convert("RGB").save(buf, format="JPEG", quality=90)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
