"""A chat model (text or vision-language) behind any server that speaks the OpenAI chat-completions API:
sglang, vLLM, `transformers serve`, a hosted endpoint.

Two ways to get a server:
- attach: `url: http://HOST:PORT/v1` of a server that is already running, or a list of such URLs: the
  requests are balanced over them (least outstanding requests) with failover (`visa.generation.balance`);
- launch: `server:` a launcher config (e.g. `_target_: visa.generation.sglang.SGLangServer`); the server
  starts on first use (so a fully cached run starts nothing) and stops when the run ends (`close`).

Requests: up to `max_concurrency` in flight (asyncio + aiohttp), results handed to the stage cache as they
complete (`stream`). Images go as base64 `data:` URLs before the text, and the text puts the fixed
instructions first and the question last, so that the server's prefix cache shares the image and the
instructions between the questions about one item. Videos are sent as frames sampled at `video_fps`.

Structured output: a prompt with a `layout` (the question LLM's, questions.constrained=true) is sent with the
server's own structured output, `response_format` with the layout's JSON schema (sglang, vLLM and the OpenAI
API take it; the reply is then `{"key_phrases": [...], "questions": [...]}`) or, with
`structured_output: regex`, sglang's `regex` field (the reply is then the method's text layout). A server
that ignores both (`transformers serve`) answers as it likes; the reply is parsed and re-asked as usual.

Faults: refused connections, timeouts, dropped connections, HTTP 5xx and 429 are retried with exponential
backoff and jitter, `max_retries` times; then the run stops with a message naming the URL. Other HTTP
errors (a wrong model name, a bad request) stop the run at once. A malformed reply (a body that is not JSON,
such as a proxy's HTML page, or JSON without `choices[0].message`) is not a model's answer: it is counted in
`malformed` and asked again like a 5xx, and never cached. An empty answer (`content` "" or null) is the
model's reply: it is kept, and counted in `empty`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import aiohttp

from visa.cache.cost import Cost
from visa.core.errors import VisaError
from visa.core.prompt import Prompt
from visa.generation.balance import ServerPool
from visa.generation.chat import MediaSettings
from visa.generation.media import frame_data_url, image_data_url, video_frames
from visa.generation.yes_no import probs_from_top_logprobs, scoring_identity, yes_ratios

log = logging.getLogger("visa.openai_api")

_MAX_BACKOFF = 60.0  # seconds: the longest wait between two tries of one request
_RETRY_STATUS = {429, 500, 502, 503, 504}
STRUCTURED_OUTPUTS = ("json_schema", "regex")


def _count(value: Any) -> int:
    """A token count from a server's `usage`; 0 when it is missing or not a count."""
    return value if isinstance(value, int) and value >= 0 else 0


@runtime_checkable
class ServerLauncher(Protocol):
    """A server this program starts and stops (e.g. `visa.generation.sglang.SGLangServer`)."""

    def ensure_running(self) -> str:
        """Start the server unless it runs; its /v1 URL."""
        ...

    def stop(self) -> None: ...


@dataclass(kw_only=True, eq=False)
class OpenAIChatGenerator(MediaSettings):
    """See the module docstring. `model` is the name sent in each request (a server serves a model under
    its path, or a name given at launch; `curl URL/models` lists it)."""

    # The name the cache knows these replies by; kept from the sglang-only client so caches stay valid.
    generator = "sglang-chat"

    batch_size: int = 64  # prompts per generate() call; requests go one per prompt
    url: str | list[str] | None = None  # attach: http://HOST:PORT/v1 of a running server, or a list of them
    server: Any = None  # launch: a ServerLauncher (a yaml node with its own _target_)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable whose value (if set) is sent as Bearer token
    max_concurrency: int = 64  # requests in flight
    request_timeout: float = 600.0  # seconds per try
    max_retries: int = 5  # tries after the first, on refused/dropped connections, timeouts, 5xx, 429
    retry_backoff: float = 1.0  # seconds before the first retry; doubles per try (with jitter)
    server_backoff: float = 5.0  # several servers: a failing one gets no requests this long (doubling)
    # how a prompt's reply layout is sent: json_schema (response_format; sglang, vLLM) or regex (sglang)
    structured_output: str = "json_schema"
    malformed: int = field(default=0, init=False)  # replies that were not a chat completion (asked again)
    empty: int = field(default=0, init=False)  # completions whose text was empty or null (kept as "")
    retried: int = field(default=0, init=False)  # tries that failed and were repeated
    # P(Yes) scoring: the first token's alternatives asked for (the OpenAI API and vLLM allow up to 20)
    top_logprobs: int = 20
    scored: int = field(default=0, init=False)  # prompts scored for P(Yes)
    unlisted: int = field(default=0, init=False)  # ... none of whose words was among top_logprobs

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.url and self.server is not None:
            raise VisaError(
                f"url={self.url} and server (launch) exclude each other: attach to a running server "
                "(set server=null) or launch one (set url=null)"
            )
        if not self.url and self.server is None:
            raise VisaError(
                "an OpenAI-compatible generator needs url=http://HOST:PORT/v1 of a running server, or a "
                "server to launch (see docs/sglang.md)"
            )
        if self.server is not None and not isinstance(self.server, ServerLauncher):
            raise VisaError(
                "server must name a launcher with its _target_, e.g. visa.generation.sglang.SGLangServer"
            )
        for url in [self.url] if isinstance(self.url, str) else self.url or []:
            if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https"):
                raise VisaError(
                    f"url={url!r} is not an http(s) URL; expected e.g. http://127.0.0.1:30000/v1 "
                    "or a list of such URLs"
                )
        if self.structured_output not in STRUCTURED_OUTPUTS:
            raise VisaError(
                f"structured_output={self.structured_output!r} is not one of {', '.join(STRUCTURED_OUTPUTS)}"
            )
        if self.top_logprobs < 1:
            raise VisaError(f"top_logprobs={self.top_logprobs} must be at least 1 (the OpenAI API allows 20)")
        if self.max_concurrency < 1 or self.max_retries < 0:
            raise VisaError(
                f"max_concurrency={self.max_concurrency} must be >= 1 and max_retries={self.max_retries} >= 0"
            )
        if isinstance(self.url, str):
            self.url = self.url.rstrip("/")
        elif self.url:
            self.url = [url.rstrip("/") for url in self.url]
        self._pool: ServerPool | None = None  # made on first use: launched servers have their URLs then

    def identity(self) -> dict[str, Any]:
        # only when not the default: the identities (and caches) of existing configs stay as they were
        ident = super().identity()
        if self.structured_output != "json_schema":
            ident["structured_output"] = self.structured_output
        return ident

    # -- server -----------------------------------------------------------------------------------------
    def endpoint(self) -> str:
        """The /v1 URL (the first one, with several servers); starts the server(s) to be launched."""
        return self.pool().urls[0]

    def pool(self) -> ServerPool:
        """The servers this generator sends to; started on first call when they are to be launched."""
        if self._pool is None:
            given = self.server.ensure_running() if self.server is not None else self.url
            assert given is not None, "__init__ checks that url or server is set"
            urls = [given] if isinstance(given, str) else list(given)
            self._pool = ServerPool(urls, backoff=self.server_backoff)
        return self._pool

    def close(self) -> None:
        """Stop a server this generator launched (the run is over)."""
        if self.server is not None:
            self.server.stop()

    def counters(self) -> dict[str, int]:
        """Malformed replies, retried tries, and with several servers the replies of each (host:port)."""
        out = {"malformed": self.malformed, "empty": self.empty, "retried": self.retried}
        if self.scored:  # only for P(Yes) scoring: the counters of generating runs stay as they were
            out.update({"yes_no/scored": self.scored, "yes_no/unlisted": self.unlisted})
        if self._pool is not None and len(self._pool.servers) > 1:
            for url, count in self._pool.counts().items():
                out[f"requests/{urlparse(url).netloc}"] = count
        return out

    # -- requests ---------------------------------------------------------------------------------------
    def _media_parts(self, prompt: Prompt) -> list[dict]:
        if prompt.media_kind == "video":
            urls = [
                frame_data_url(frame)
                for path in prompt.media
                for frame in video_frames(
                    path, self.video_fps, self.frame_pixels, self.max_frames, self.video_min_pixels
                )
            ]
        else:
            urls = [image_data_url(path, self.max_pixels) for path in prompt.media]
        return [{"type": "image_url", "image_url": {"url": url}} for url in urls]

    def request_body(self, prompt: Prompt) -> dict:
        parts = self._media_parts(prompt) if self.sees_media(prompt) else None
        temperature, seed = self.sampling_of(prompt)
        body = {
            "model": self.model,
            "messages": self.messages(prompt, parts),
            "max_tokens": self.max_new_tokens,
            "temperature": temperature,
            "top_p": self.top_p,
        }
        if temperature > 0:
            body["seed"] = seed
        if self.repetition_penalty is not None:  # sglang's and vLLM's extension of the OpenAI API
            body["repetition_penalty"] = self.repetition_penalty
        if prompt.layout is not None:
            if self.structured_output == "regex":  # sglang's extension
                body["regex"] = prompt.layout.regex()
            else:
                schema = {"name": "questions", "schema": prompt.layout.json_schema(), "strict": True}
                body["response_format"] = {"type": "json_schema", "json_schema": schema}
        return body

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _reply_text(self, url: str, body: str) -> tuple[str, Cost] | None:
        """The completion's text and its tokens (the server's `usage`; 0 where a server leaves it out);
        None for a malformed reply (not JSON, or no `choices[0].message`)."""
        try:
            reply = json.loads(body)
            message = reply["choices"][0]["message"]
            content = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            self.malformed += 1
            if self.malformed <= 3:
                log.warning("malformed reply from %s (asked again): %.200r", url, body)
            return None
        usage = reply.get("usage") if isinstance(reply, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        cost = Cost(
            tokens_in=_count(usage.get("prompt_tokens")), tokens_out=_count(usage.get("completion_tokens"))
        )
        if not isinstance(content, str) or not content.strip():
            self.empty += 1
            if self.empty == 1:
                log.warning("an empty reply from %s (kept as an empty answer; counted in empty)", url)
            return "", cost
        return content.strip(), cost

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
        self,
        client: aiohttp.ClientSession,
        pool: ServerPool,
        index: int,
        prompt: Prompt,
        words: Sequence[str] | None = None,
    ) -> tuple[int, Any, Cost]:
        """(index, reply text, its tokens), or with `words` (index, each word's first-token probability, its
        tokens)."""
        build = self.request_body if words is None else self.yes_no_body
        if self.sees_media(prompt):
            body = await asyncio.to_thread(build, prompt)  # reading and encoding pixels
        else:
            body = build(prompt)
        last, last_url, failures = "", pool.urls[0], 0
        # A failure counts against max_retries only when no other server can take the request at once; the
        # cap on tries ends a request whose servers keep failing in turn.
        for _ in range((self.max_retries + 1) * len(pool.urls) * 2):
            url = pool.acquire()
            if url is None:  # every server is out: wait for the first to come back
                await asyncio.sleep(pool.wait_seconds())
                continue
            answered: bool | None = None  # None: cancelled before an outcome (the stage was closed)
            retry_after = None
            try:
                async with client.post(f"{url}/chat/completions", json=body) as response:
                    status, text = response.status, await response.text(errors="replace")
                    retry_after = response.headers.get("Retry-After")
                # a reply, or an error that is the request's own fault (a wrong model name): the server works
                answered = status == 200 or status not in _RETRY_STATUS
                last = f"HTTP {status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # refused, timed out, dropped, bad HTTP
                answered = False
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            finally:
                pool.release(url, answered)
            if answered and status == 200:
                reply = self._reply_text(url, text) if words is None else self._reply_probs(url, text, words)
                if reply is not None:
                    return index, *reply
                last = f"a malformed reply {' '.join(text.split())[:80]!r}"
            elif answered:
                raise VisaError(
                    f"{url}/chat/completions answered HTTP {status} for model {self.model!r}: "
                    f"{text.strip()[:200]!r}; check model= against {url}/models"
                )
            last_url = url
            self.retried += 1
            if any(server.url != url for server in pool.up()):
                continue  # another server takes it at once
            failures += 1
            if failures > self.max_retries:
                self.retried -= 1  # this try is not repeated
                break
            await asyncio.sleep(max(self._delay(failures - 1, retry_after), pool.wait_seconds()))
        if last.startswith("a malformed reply"):
            raise VisaError(
                f"{last_url}/chat/completions failed {failures} times (last: {last}); check that url= is the "
                "server's OpenAI-compatible /v1 address (a proxy or a login page answers HTML)"
            )
        if len(pool.urls) == 1:
            raise VisaError(
                f"{last_url}/chat/completions failed {failures} times (last: {last}); check that the "
                f"server is up and reachable, or raise max_retries / request_timeout={self.request_timeout:g}"
            )
        raise VisaError(
            f"all {len(pool.urls)} servers failed (last: {last} from {last_url}): {', '.join(pool.urls)}; "
            "check that they are up and reachable, or raise max_retries / server_backoff"
        )

    async def _run(
        self, pool: ServerPool, prompts: list[Prompt], put, words: Sequence[str] | None = None
    ) -> None:
        """Keep up to max_concurrency requests in flight; hand each reply to `put` as it completes."""
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, connect=min(self.request_timeout, 30.0))
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self._headers()
        ) as client:
            todo = iter(enumerate(prompts))
            in_flight: set[asyncio.Task] = set()

            def refill() -> None:
                # A sliding window, not one task per prompt: 300k prompts would hold 300k encoded images.
                for index, prompt in todo:
                    in_flight.add(asyncio.create_task(self._one(client, pool, index, prompt, words)))
                    if len(in_flight) >= self.max_concurrency:
                        return

            refill()
            try:
                while in_flight:
                    done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    in_flight.difference_update(done)
                    failed = None
                    for task in done:  # every finished task is looked at: no "exception never retrieved"
                        if task.cancelled():
                            continue
                        error = task.exception()
                        if error is None:
                            put(task.result())
                        elif failed is None:
                            failed = error
                    if failed is not None:  # a request that failed for good stops the stage here
                        raise failed
                    refill()
            finally:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

    def stream(self, prompts: list[Prompt]) -> Iterator[tuple[int, str, Cost]]:
        """(index, reply, its tokens) in completion order (see `_stream`)."""
        return self._stream(prompts)

    def _stream(
        self, prompts: list[Prompt], words: Sequence[str] | None = None
    ) -> Iterator[tuple[int, Any, Cost]]:
        """(index, reply, its tokens) in completion order; with `words`, (index, each word's probability, its
        tokens).

        The requests run on an event loop in a helper thread; this thread only waits on a queue, so Ctrl-C
        and errors stop the stage at once, and closing the iterator cancels the requests in flight.
        """
        if not prompts:
            return
        pool = self.pool()
        results: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        done = object()

        def work() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._run(pool, prompts, results.put, words))
            except BaseException as e:  # handed to the consuming thread
                results.put(e)
            finally:
                loop.run_until_complete(loop.shutdown_default_executor())
                results.put(done)

        thread = threading.Thread(target=work, name="visa-openai-client", daemon=True)
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
        for index, text, _ in self.stream(prompts):
            out[index] = text
        return out  # type: ignore[return-value]

    # -- P(Yes) (`visa.generation.YesNoScorer`) ----------------------------------------------------------
    def yes_no_identity(self, yes: str, no: str) -> dict:
        # top_logprobs changes which words are found (an unlisted one counts 0)
        return scoring_identity(self.identity(), yes, no, top_logprobs=self.top_logprobs)

    def yes_no_body(self, prompt: Prompt) -> dict:
        """A request for the first token's `top_logprobs` only: one token, greedy, nothing else that changes
        the distribution (sglang and vLLM report the model's own log-probabilities)."""
        parts = self._media_parts(prompt) if self.sees_media(prompt) else None
        return {
            "model": self.model,
            "messages": self.messages(prompt, parts),
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }

    def _reply_probs(self, url: str, body: str, words: Sequence[str]) -> tuple[list[float], Cost] | None:
        """Each word's probability from the first token's top_logprobs; None for a malformed reply (asked
        again). A completion without logprobs is a server that ignores them: the run stops."""
        try:
            reply = json.loads(body)
            choice = reply["choices"][0]
            choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            self.malformed += 1
            if self.malformed <= 3:
                log.warning("malformed reply from %s (asked again): %.200r", url, body)
            return None
        try:
            top = (choice.get("logprobs") or {})["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError) as e:
            raise VisaError(
                f"{url}/chat/completions answered model {self.model!r} without the first token's "
                "top_logprobs; P(Yes) needs a server that returns logprobs (sglang, vLLM; transformers serve "
                "ignores them)"
            ) from e
        probs = probs_from_top_logprobs(top, words)
        self.scored += 1
        self.unlisted += not any(probs)
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        return probs, Cost(
            tokens_in=_count(usage.get("prompt_tokens")), tokens_out=_count(usage.get("completion_tokens"))
        )

    def first_token_probs(self, prompts: list[Prompt], words: Sequence[str]) -> list[list[float]]:
        """Per prompt, each word's probability as the first token, from the server's top_logprobs (a word
        outside them: 0). Requests go as `generate`'s do (concurrent, retried, balanced)."""
        out: list[list[float] | None] = [None] * len(prompts)
        for index, probs, _ in self._stream(prompts, tuple(words)):
            out[index] = probs
        return out  # type: ignore[return-value]

    def yes_no(self, prompts: list[Prompt], yes: str = "Yes", no: str = "No") -> list[float]:
        return yes_ratios(self.first_token_probs(prompts, (yes, no)))
