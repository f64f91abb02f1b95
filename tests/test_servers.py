"""One stage, several servers: least-outstanding-requests balancing, failover, all-down, per-server counts
(the real client against local fake OpenAI-compatible servers)."""

from __future__ import annotations

import socket
import sys

import pytest
from helpers.fake_openai_server import FakeOpenAIServer
from test_sglang_launch import fake_sglang as fake_sglang  # a fixture

from visa.core.errors import VisaError
from visa.generation.openai_api import OpenAIChatGenerator
from visa.method.prompts import Prompt


def client(urls, **kw) -> OpenAIChatGenerator:
    kw = {"max_retries": 3, "retry_backoff": 0.01, "server_backoff": 0.2, "request_timeout": 10.0, **kw}
    return OpenAIChatGenerator(model="fake-model", url=urls, **kw)


def prompts(n: int) -> list[Prompt]:
    return [Prompt(f"Say something\nitem {i}") for i in range(n)]


def replies(n: int) -> list[str]:
    return [f"Reply to: item {i}" for i in range(n)]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens once closed


def test_requests_spread_over_servers_and_are_counted():
    servers = [FakeOpenAIServer(latency=0.02).start() for _ in range(3)]
    try:
        gen = client([s.url for s in servers], max_concurrency=12)
        assert gen.generate(prompts(90)) == replies(90)
    finally:
        for s in servers:
            s.stop()
    counts = {k: v for k, v in gen.counters().items() if k.startswith("requests/")}
    assert counts == {f"requests/127.0.0.1:{s.port}": s.completed for s in servers}
    assert sum(counts.values()) == 90 and all(s.completed >= 15 for s in servers)
    assert all(s.max_in_flight <= 12 for s in servers)


def test_least_outstanding_sends_more_to_the_faster_server():
    with FakeOpenAIServer(latency=0.25) as slow, FakeOpenAIServer(latency=0.0) as fast:
        gen = client([slow.url, fast.url], max_concurrency=4)
        assert gen.generate(prompts(60)) == replies(60)
    assert fast.completed > 3 * slow.completed


def test_a_failing_server_is_taken_out_and_its_requests_go_elsewhere():
    with FakeOpenAIServer(fault_rule=lambda body: "503") as broken, FakeOpenAIServer() as good:
        gen = client([broken.url, good.url], max_concurrency=8, max_retries=0)
        assert gen.generate(prompts(40)) == replies(40)  # max_retries=0: no request failed for good
    assert good.completed == 40 and broken.completed == 0
    assert len(broken.requests) < 10  # out after its first failures, not tried for every request
    assert gen.counters()["retried"] == len(broken.requests)


def test_a_server_killed_mid_run_loses_nothing_and_answers_nothing_twice():
    answered = {"n": 0}

    def dies_after_ten(body):
        answered["n"] += 1
        return "drop" if answered["n"] > 10 else None

    with (
        FakeOpenAIServer(latency=0.01, fault_rule=dies_after_ten) as dying,
        FakeOpenAIServer(latency=0.01) as ok,
    ):
        gen = client([dying.url, ok.url], max_concurrency=8)
        assert gen.generate(prompts(80)) == replies(80)
    assert dying.completed + ok.completed == 80  # every prompt answered exactly once


def test_all_servers_down_is_one_line():
    urls = [closed_port_url(), closed_port_url()]
    gen = client(urls, max_retries=2, server_backoff=0.05)
    with pytest.raises(VisaError) as error:
        gen.generate(prompts(3))
    message = str(error.value)
    assert "\n" not in message and message.startswith("all 2 servers failed")
    assert urls[0] in message and urls[1] in message


def test_bad_url_in_a_list():
    with pytest.raises(VisaError, match="url='ftp://x' is not an http"):
        client(["http://127.0.0.1:1/v1", "ftp://x"])
    with pytest.raises(VisaError, match="twice"):
        client(["http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1/"]).pool()


def test_a_server_group_starts_one_server_per_gpu_group_and_balances(fake_sglang, tmp_path):
    from test_sglang_launch import free_port

    from visa.generation.server_group import SGLangServerGroup

    port = free_port()
    while True:  # two free ports in a row
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port + 1)) != 0:
                break
        port = free_port()
    group = SGLangServerGroup(
        "org/model", replicas=2, tp=2, port=port, python=sys.executable, startup_timeout=60
    )
    gen = OpenAIChatGenerator(model="org/model", server=group, retry_backoff=0.01, max_concurrency=4)
    try:
        assert gen.generate(prompts(20)) == replies(20)
        counts = gen.counters()
    finally:
        gen.close()
    assert counts[f"requests/127.0.0.1:{port}"] > 0 and counts[f"requests/127.0.0.1:{port + 1}"] > 0
    logs = [(tmp_path / f"sglang-{p}.log").read_text() for p in (port, port + 1)]
    assert "--tp 2" in logs[0]
    assert "--base-gpu-id 0" in logs[0] and "--base-gpu-id 2" in logs[1]
    assert all(not server.running() for server in group.servers)
