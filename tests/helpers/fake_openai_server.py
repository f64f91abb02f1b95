"""A small HTTP server on 127.0.0.1 with the shape of sglang's OpenAI-compatible API, for tests and the
benchmark: POST /v1/chat/completions, GET /v1/models, GET /health.

It can be told to be slow (`latency` seconds per request) and to misbehave: `faults` is a list consumed one
entry per request, in arrival order, and `fault_rule(body)` is asked when the list is empty. A fault is
None (answer normally), "500"/"503"/"429"/"404" (that HTTP status), "drop" (close the connection without a
reply), "malformed" (200 with JSON that has no choices), "garbage" (200 with a body that is not JSON) or
"slow:SECONDS" (answer after that long). It records every request body and the most requests it had in
flight at once. `capacity` bounds how many requests it works on at once (a GPU server's batch); the others
wait their turn.

Structured output, as sglang and vLLM do it: a request with `response_format` of type json_schema has its
schema checked (an invalid JSON schema is answered with HTTP 400, as those servers do) and gets a JSON reply
that is validated against that schema before it is sent; a request with sglang's `regex` gets a text reply
that matches the expression (400 when none of its replies can). `structured` counts such requests.

Run it alone (for the benchmark, so that the client and the server do not share one interpreter):
    python tests/helpers/fake_openai_server.py --latency 0.05    # prints the URL, serves until killed
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_reply(body: dict) -> str:
    """A reply computed from the request: a parsable question list for question prompts (they end with
    the query), else an echo of the last line of the prompt text, so a test can match replies to prompts."""
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[-1]["text"]
    last = text.strip().splitlines()[-1]
    if last.startswith("Query:"):
        questions = "\n".join(f"{i}. Is detail {i} of the query visible in the picture?" for i in range(1, 6))
        return f"key phrases:\n- {last[6:].strip()}\nquestions:\n{questions}"
    return f"Reply to: {last}"


def fake_usage(body: dict, reply: str) -> dict:
    """A server's token counts, as sglang and vLLM report them; here one token per word of the messages'
    text (every text part) and of the reply."""
    words = 0
    for message in body.get("messages", []):
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or []]
        words += sum(len(str(p).split()) for p in parts)
    out = len(reply.split())
    return {"prompt_tokens": words, "completion_tokens": out, "total_tokens": words + out}


class StructuredError(Exception):
    """The request's schema or expression cannot be honoured (the server answers HTTP 400)."""


def structured_reply(body: dict) -> str | None:
    """The reply to a request with a JSON schema or a regex, built from the query and checked against what the
    request asked for; None for a request without either."""
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[-1]["text"]
    query = text.strip().splitlines()[-1].removeprefix("Query:").strip().strip('"')[:30] or "the query"
    fmt = body.get("response_format")
    if fmt is not None and fmt.get("type") == "json_schema":
        import jsonschema

        schema = fmt["json_schema"]["schema"]
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise StructuredError(f"invalid JSON schema: {e.message}") from e
        count = schema["properties"]["questions"]["minItems"]
        reply = {
            "key_phrases": [query],
            "questions": [f"Is detail {i} of the query visible in the picture?" for i in range(1, count + 1)],
        }
        try:
            jsonschema.validate(reply, schema)
        except jsonschema.ValidationError as e:
            raise StructuredError(f"no reply fits the schema: {e.message}") from e
        return json.dumps(reply)
    if "regex" in body:
        for count in range(1, 11):
            questions = "\n".join(
                f"{i}. Is detail {i} of the query visible in the picture?" for i in range(1, count + 1)
            )
            reply = f"key phrases:\n- {query}\nquestions:\n{questions}"
            if re.fullmatch(body["regex"], reply):
                return reply
        raise StructuredError("no reply matches the regex")
    return None


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # many connections open at once (the listen backlog)
    daemon_threads = True


class FakeOpenAIServer:
    def __init__(
        self,
        latency: float = 0.0,
        faults: list[str | None] | None = None,
        fault_rule: Callable[[dict], str | None] | None = None,
        reply: Callable[[dict], str] = default_reply,
        port: int = 0,
        capacity: int | None = None,
    ):
        self.latency, self.faults, self.fault_rule, self.reply = (
            latency,
            list(faults or []),
            fault_rule,
            reply,
        )
        self.requests: list[dict] = []  # every chat request body, in arrival order (retries included)
        self.completed = 0  # replies with status 200 fully written
        self.structured = 0  # requests with a JSON schema or a regex, answered to fit it
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(capacity) if capacity else None
        self._httpd = _HTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_fault(self, body: dict) -> str | None:
        with self._lock:
            self.requests.append(body)
            if self.faults:
                return self.faults.pop(0)
        return self.fault_rule(body) if self.fault_rule else None

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path in ("/health", "/health_generate"):
                    self._send(200, b"")
                elif self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server._slots is None:
                        self._answer(body)
                    else:
                        with server._slots:
                            self._answer(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) or was killed
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body: dict) -> None:
                fault = server._next_fault(body)
                delay = server.latency
                if fault and fault.startswith("slow:"):
                    delay, fault = float(fault[5:]), None
                if delay:
                    time.sleep(delay)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault in ("500", "503", "429", "404"):
                    self._send(int(fault), json.dumps({"error": f"injected {fault}"}).encode())
                elif fault == "malformed":
                    self._send(
                        200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
                    )
                elif fault == "garbage":
                    self._send(200, b"<html>proxy error</html>", "text/html")
                else:
                    try:
                        content = structured_reply(body)
                    except StructuredError as e:
                        self._send(400, json.dumps({"error": str(e)}).encode())
                        return
                    if content is not None:
                        with server._lock:
                            server.structured += 1
                    text = server.reply(body) if content is None else content
                    reply = {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": fake_usage(body, text),
                    }
                    self._send(200, json.dumps(reply).encode())
                    with server._lock:
                        server.completed += 1

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--capacity", type=int, default=None, help="requests worked on at once")
    args = parser.parse_args()
    server = FakeOpenAIServer(latency=args.latency, port=args.port, capacity=args.capacity)
    print(server.url, flush=True)
    try:
        server._httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
