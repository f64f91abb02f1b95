"""A small real OpenAI-compatible chat server around a transformers causal LM (a tiny one in tests), that
returns the first token's `logprobs` / `top_logprobs` as sglang and vLLM do (`transformers serve` ignores
them). It runs the model itself, one prompt at a time and unpadded, so that P(Yes) read from its answers is
an independent check of P(Yes) read from the logits in-process (visa.generation.hf).

POST /v1/chat/completions with text messages (a string, or typed parts that are all text): the chat template
applied with the generation prompt, one forward pass, the greedy first token as the reply's content
(`max_tokens` beyond 1 is not honoured: tests ask for one token), and with `logprobs: true` the `top_logprobs`
most likely first tokens, each named by its decoded text. Every request body is kept in `requests`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler

import torch

from helpers.fake_openai_server import _HTTPServer


class LogprobServer:
    def __init__(self, model_dir: str, served_name: str = "tiny"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.served_name = served_name
        self.requests: list[dict] = []
        self._lock = threading.Lock()  # one forward pass at a time (the model is not thread-safe)
        self._httpd = _HTTPServer(("127.0.0.1", 0), self._handler_class())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> LogprobServer:
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @torch.no_grad()
    def complete(self, body: dict) -> dict:
        """The chat completion of one request (see the module docstring)."""
        messages = []
        for m in body["messages"]:
            content = m["content"]
            if not isinstance(content, str):
                if any(part["type"] != "text" for part in content):
                    raise ValueError("this server reads text only")
                content = "".join(part["text"] for part in content)
            messages.append({"role": m["role"], "content": content})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with self._lock:
            logits = self.lm(input_ids=ids).logits[0, -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        first = int(logprobs.argmax())
        choice: dict = {
            "index": 0,
            "message": {"role": "assistant", "content": self.tokenizer.decode([first])},
            "finish_reason": "length",
        }
        if body.get("logprobs"):
            values, order = logprobs.topk(min(int(body.get("top_logprobs") or 0) or 1, logprobs.numel()))
            top = [
                {"token": self.tokenizer.decode([i]), "logprob": float(v), "bytes": None}
                for v, i in zip(values.tolist(), order.tolist())
            ]
            entry = {
                "token": self.tokenizer.decode([first]),
                "logprob": float(logprobs[first]),
                "top_logprobs": top,
            }
            choice["logprobs"] = {"content": [entry]}
        return {"id": "x", "object": "chat.completion", "model": self.served_name, "choices": [choice]}

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                server.requests.append(body)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": "not found"})
                elif body.get("model") != server.served_name:
                    self._send(404, {"error": f"model {body.get('model')!r} is not served"})
                else:
                    try:
                        self._send(200, server.complete(body))
                    except ValueError as e:
                        self._send(400, {"error": str(e)})

        return Handler
