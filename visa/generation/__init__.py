"""Text and vision-language generation.

A generator has this interface:

    identity() -> dict                      # model id, dtype, generation parameters: all that changes outputs
    generate(list[Prompt]) -> list[str]     # one reply per prompt, same order
    batch_size: int
    uses_context: bool                      # True for text-only answerers that read Prompt.context
                                            # (the item's description) instead of the pixels
    stream(list[Prompt]) -> Iterator[(index, reply)]   # optional: replies as they complete (servers)

Constructors only store settings; weights load (or servers start) on first use, so a fully cached run
loads no model.

`make_generator` is the `_target_` of every generator config (`conf/question_llm/`, `conf/answer_mllm/`,
`conf/describer/`): all of them share one set of keys, and `backend` picks the implementation, so that
`question_llm.backend=sglang question_llm.url=http://127.0.0.1:30000/v1` works on any of them.
"""

from __future__ import annotations

from typing import Any

from visa.errors import VisaError

BACKENDS = ("hf", "sglang")


def make_generator(
    model: str,
    backend: str = "hf",
    gguf_file: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    batch_size: int = 16,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    system_prompt: str | None = None,
    uses_context: bool = False,
    trust_remote_code: bool = False,
    seed: int = 0,
    url: str | None = None,
    # sglang: attach to `url`, or launch a server from `server` (model_path, tp, mem_fraction, port, host,
    # python, extra_args, startup_timeout); see docs/sglang.md.
    launch: bool = False,
    server: dict | None = None,
    max_concurrency: int = 64,
    request_timeout: float = 600.0,
    max_retries: int = 5,
    retry_backoff: float = 1.0,
    # Media sent to vision-language models: videos as frames at video_fps (at most max_frames), every
    # image or frame scaled down to at most max_pixels pixels (None: images as they are).
    video_fps: float = 3.0,
    max_frames: int = 64,
    max_pixels: int | None = None,
    # hf: "text" (AutoModelForCausalLM) or "vision" (AutoProcessor + AutoModelForImageTextToText)
    kind: str = "text",
) -> Any:
    """Build the generator of `backend` ("hf": transformers in this process; "sglang": a server)."""
    if backend == "hf" and kind == "vision":
        from visa.generation.hf import HFVisionGenerator

        return HFVisionGenerator(
            model=model,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            system_prompt=system_prompt,
            trust_remote_code=trust_remote_code,
            seed=seed,
            video_fps=video_fps,
            max_frames=max_frames,
            max_pixels=max_pixels,
        )
    if kind not in ("text", "vision"):
        raise VisaError(f"kind={kind!r} is not one of text, vision")
    if backend == "hf":
        from visa.generation.hf import HFTextGenerator

        return HFTextGenerator(
            model=model,
            gguf_file=gguf_file,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            system_prompt=system_prompt,
            uses_context=uses_context,
            trust_remote_code=trust_remote_code,
            seed=seed,
        )
    if backend == "sglang":
        from visa.generation.sglang import SGLangGenerator

        return SGLangGenerator(
            model=model,
            url=url,
            launch=launch,
            server=server,
            max_concurrency=max_concurrency,
            request_timeout=request_timeout,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            system_prompt=system_prompt,
            uses_context=uses_context,
            seed=seed,
            video_fps=video_fps,
            max_frames=max_frames,
            max_pixels=max_pixels,
        )
    raise VisaError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
