"""The sglang client against a local fake server: request layout, ordering, concurrency bound, faults."""

from __future__ import annotations

import base64
import io
import os
import socket

import pytest
from helpers.fake_openai_server import FakeOpenAIServer
from PIL import Image

from visa.core.errors import VisaError
from visa.generation.openai_api import OpenAIChatGenerator
from visa.generation.sglang import SGLangServer
from visa.method.prompts import Prompt, answer_prompt


def client(url: str, **kw) -> OpenAIChatGenerator:
    kw = {"max_retries": 4, "retry_backoff": 0.01, "request_timeout": 10.0, **kw}
    return OpenAIChatGenerator(model="fake-model", url=url, **kw)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, colour in enumerate(("red", "blue")):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (32, 24), colour).save(path)
        paths.append(str(path))
    return paths


def test_request_layout_images_first_question_last(images):
    prompt = answer_prompt("What colour is the car?", ["red car"], tuple(images), "image")
    with FakeOpenAIServer() as server:
        gen = client(server.url, system_prompt="Be brief.", max_new_tokens=40)
        assert gen.generate([prompt]) == ["Reply to: Question: What colour is the car?"]
    (body,) = server.requests
    assert body["model"] == "fake-model" and body["max_tokens"] == 40 and body["temperature"] == 0.0
    assert "seed" not in body  # greedy
    system, user = body["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    kinds = [part["type"] for part in user["content"]]
    assert kinds == ["image_url", "image_url", "text"]  # media first: the shared prefix
    for part, path in zip(user["content"][:2], images, strict=True):
        head, data = part["image_url"]["url"].split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data) == open(path, "rb").read()
    text = user["content"][-1]["text"]
    assert text == prompt.text and text.startswith("Answer the question")
    assert text.endswith("Question: What colour is the car?")


def test_prompts_about_one_image_share_their_prefix(images):
    prompts = [answer_prompt(q, ["red car"], (images[0],), "image") for q in ("Is it red?", "Is it big?")]
    with FakeOpenAIServer() as server:
        client(server.url, max_concurrency=1).generate(prompts)
    a, b = (r["messages"][-1]["content"] for r in server.requests)
    assert a[0] == b[0]  # the same image part
    common = os.path.commonprefix([a[1]["text"], b[1]["text"]])
    assert common.endswith("Question: Is it ") and len(common) > 150  # only the question differs, at the end


def test_max_pixels_scales_images_down(images, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300), "green").save(big)
    with FakeOpenAIServer() as server:
        client(server.url, max_pixels=100 * 75).generate([Prompt("describe", (str(big),), "image")])
    url = server.requests[0]["messages"][-1]["content"][0]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.width * image.height <= 100 * 75 and image.width / image.height == pytest.approx(4 / 3, 0.05)


def test_context_answerer_sends_the_description_not_the_pixels(images):
    prompt = Prompt("Question: Is it red?", (images[0],), "image", context="A red square.")
    with FakeOpenAIServer() as server:
        client(server.url, uses_context=True).generate([prompt])
    content = server.requests[0]["messages"][-1]["content"]
    assert content == "Description of the image: A red square.\n\nQuestion: Is it red?"


def test_sampling_sends_the_seed():
    with FakeOpenAIServer() as server:
        client(server.url, temperature=0.2, seed=7).generate([Prompt("hi")])
    assert server.requests[0]["temperature"] == 0.2 and server.requests[0]["seed"] == 7


def test_results_match_their_prompts_in_any_completion_order():
    prompts = [Prompt(f"prompt\nitem {i}") for i in range(60)]
    # Later prompts answer sooner, so replies complete out of submission order.
    with FakeOpenAIServer(
        fault_rule=lambda b: f"slow:{0.002 * (60 - int(b['messages'][-1]['content'][-2:]))}"
    ) as s:
        gen = client(s.url, max_concurrency=16)
        pairs = list(gen.stream(prompts))
        assert sorted(i for i, _, _ in pairs) == list(range(60))
        assert all(text == f"Reply to: item {i}" for i, text, _ in pairs)
        assert gen.generate(prompts[:5]) == [f"Reply to: item {i}" for i in range(5)]


@pytest.mark.parametrize("limit", [1, 5])
def test_requests_in_flight_never_exceed_max_concurrency(limit):
    with FakeOpenAIServer(latency=0.03) as server:
        client(server.url, max_concurrency=limit).generate([Prompt(f"p {i}") for i in range(25)])
    assert len(server.requests) == 25
    assert server.max_in_flight <= limit
    if limit > 1:
        assert server.max_in_flight > 1  # requests really overlap


def test_transient_faults_are_retried_until_success():
    with FakeOpenAIServer(faults=["500", "429", "drop", "503"]) as server:
        gen = client(server.url, max_retries=4)
        assert gen.generate([Prompt("hello")]) == ["Reply to: hello"]
    assert len(server.requests) == 5 and gen.retried == 4 and gen.malformed == 0


def test_a_timeout_is_retried():
    with FakeOpenAIServer(faults=["slow:1.5"]) as server:
        gen = client(server.url, request_timeout=0.3)
        assert gen.generate([Prompt("hello")]) == ["Reply to: hello"]
    assert gen.retried == 1


def test_persistent_5xx_stops_with_the_url():
    with FakeOpenAIServer(fault_rule=lambda body: "503") as server:
        gen = client(server.url, max_retries=2)
        with pytest.raises(
            VisaError, match=rf"{server.url}/chat/completions failed 3 times \(last: HTTP 503\)"
        ):
            gen.generate([Prompt("hello")])
    assert len(server.requests) == 3


def test_connection_refused_stops_with_the_url():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    gen = client(url, max_retries=2)
    with pytest.raises(VisaError, match=rf"{url}/chat/completions failed 3 times .*Connect"):
        list(gen.stream([Prompt("a"), Prompt("b")]))
    assert gen.retried >= 2


def test_client_errors_are_not_retried():
    with FakeOpenAIServer(faults=["404"]) as server:
        with pytest.raises(VisaError, match=r"HTTP 404 for model 'fake-model'.*/models"):
            client(server.url).generate([Prompt("hello")])
    assert len(server.requests) == 1


def test_malformed_replies_are_asked_again_and_counted():
    """A reply that is not a chat completion (no choices; a proxy's HTML page) is not the model's answer: it
    is asked again, never returned (so never cached), and counted."""
    faults = [None, "malformed", "garbage", None, None]
    with FakeOpenAIServer(faults=faults) as server:
        gen = client(server.url, max_concurrency=1, retry_backoff=0.01)
        out = gen.generate([Prompt(f"p {i}") for i in range(4)])
    assert out == [f"Reply to: p {i}" for i in range(4)]
    assert gen.malformed == 2 and gen.retried == 2 and gen.empty == 0
    assert len(server.requests) == 6


def test_persistent_malformed_replies_stop_with_the_url():
    with FakeOpenAIServer(fault_rule=lambda body: "garbage") as server:
        gen = client(server.url, max_retries=1, retry_backoff=0.01)
        with pytest.raises(
            VisaError,
            match=rf"{server.url}/chat/completions failed 2 times \(last: a malformed reply "
            r"'<html>proxy error</html>'\); check that url= is the server's OpenAI-compatible /v1",
        ):
            gen.generate([Prompt("hello")])


def test_empty_replies_are_kept_and_counted():
    with FakeOpenAIServer(reply=lambda body: "  ") as server:
        gen = client(server.url)
        assert gen.generate([Prompt("a"), Prompt("b")]) == ["", ""]
    assert gen.empty == 2 and gen.malformed == 0 and gen.retried == 0


def test_closing_the_stream_cancels_the_rest():
    with FakeOpenAIServer(latency=0.05) as server:
        stream = client(server.url, max_concurrency=2).stream([Prompt(f"p {i}") for i in range(50)])
        next(stream)
        stream.close()
        sent = len(server.requests)
    assert sent < 10  # the remaining prompts were never sent


@pytest.mark.parametrize(
    "kw, message",
    [
        ({}, "needs url="),
        ({"url": "127.0.0.1:30000"}, "not an http"),
        ({"url": "http://x/v1", "server": SGLangServer("m")}, "exclude each other"),
        ({"url": "http://x/v1", "max_concurrency": 0}, "max_concurrency=0"),
        ({"server": {"gpus": 2}}, "server must name a launcher"),
    ],
)
def test_bad_settings_are_one_line_errors(kw, message):
    with pytest.raises(VisaError, match=message):
        OpenAIChatGenerator(model="m", **kw)


def test_identity_ignores_where_the_server_is():
    a = OpenAIChatGenerator(model="m", url="http://a:1/v1").identity()
    b = OpenAIChatGenerator(model="m", server=SGLangServer("m", port=31000, tp=4)).identity()
    c = OpenAIChatGenerator(model="m", url="http://a:1/v1", max_new_tokens=9).identity()
    assert a == b and a != c


def test_requests_failing_together_leave_no_unretrieved_task_errors(caplog):
    """32 requests refused at once: one error for the stage, and no asyncio "Task exception was never
    retrieved" for the others (logged when their tasks are collected: here, once the error is dropped)."""
    import gc
    import logging

    caplog.set_level(logging.ERROR, logger="asyncio")
    with FakeOpenAIServer(fault_rule=lambda body: "404") as server:
        gen = client(server.url, max_concurrency=32)
        error = None
        try:
            gen.generate([Prompt(f"p {i}") for i in range(32)])
        except VisaError as e:
            error = str(e)
    assert error is not None and "HTTP 404" in error
    gc.collect()
    assert "never retrieved" not in caplog.text
