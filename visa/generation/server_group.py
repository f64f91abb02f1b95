"""Several sglang servers of one model on one node, one per GPU group, behind one generator.

`replicas` servers, each `tp` GPUs: replica r uses GPUs r*tp ... r*tp+tp-1 (sglang's `--base-gpu-id`) and
port `port + r`. They start together on first use and stop with the run; the generator balances its
requests over them (`visa.generation.balance`). sglang's own data parallelism (`--dp-size` in
`extra_args`, one server) is the simpler alternative on one node; separate servers also keep going when
one of them dies (docs/scaling.md).
"""

from __future__ import annotations

import os

from visa.core.errors import VisaError
from visa.generation.sglang import SGLangServer


class SGLangServerGroup:
    def __init__(
        self,
        model_path: str,
        replicas: int = 2,
        tp: int = 1,
        port: int = 30000,
        host: str = "127.0.0.1",
        mem_fraction: float | None = None,
        python: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        startup_timeout: float = 1800.0,
        log_dir: str | os.PathLike | None = None,
    ):
        if replicas < 1 or tp < 1:
            raise VisaError(f"server.replicas={replicas} and server.tp={tp} must be at least 1")
        if "--base-gpu-id" in extra_args:
            raise VisaError("server.extra_args: --base-gpu-id is set per replica by the server group")
        self.servers = [
            SGLangServer(
                model_path=model_path,
                tp=tp,
                mem_fraction=mem_fraction,
                port=port + r,
                host=host,
                python=python,
                extra_args=[*extra_args, "--base-gpu-id", str(r * tp)],
                startup_timeout=startup_timeout,
                log_dir=log_dir,
            )
            for r in range(replicas)
        ]

    def commands(self) -> list[list[str]]:
        return [server.command() for server in self.servers]

    def ensure_running(self) -> list[str]:
        """Start every replica that is not running, their /v1 URLs. All start at once (each loads its
        weights), from this thread: a server stops when the thread that started it ends."""
        try:
            urls = [server.ensure_running(wait=False) for server in self.servers]
            for server in self.servers:
                server.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return urls

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
