"""Model loading that every part shares (backbones, generators, scorers): weights from a hub id or a local
folder with a one-line error offline, one dtype vocabulary, the short model name used in identities, the
out-of-memory hint, and one load-once helper. It imports nothing else of VISA but the error type, so any
part may use it without depending on another part."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from visa.core.errors import VisaError

# The dtype names configs use (`dtype: bfloat16`), and the torch dtype each loads the weights in.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

F = TypeVar("F", bound=Callable[..., Any])


def quiet_loaders() -> None:
    """`progress=false`: the model loaders' own progress bars go too (transformers' "Loading weights" and
    GGUF de-quantizing, huggingface_hub's downloads). Both read HF_HUB_DISABLE_PROGRESS_BARS when first
    imported (also in processes a run starts); a library imported already is told directly."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def torch_dtype(name: str, where: str = "dtype") -> torch.dtype:
    """The torch dtype of a config's dtype name; a one-line error naming `where` for any other name."""
    if name not in DTYPES:
        raise VisaError(f"{where}={name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_dtype(name: str, where: str = "dtype") -> None:
    torch_dtype(name, where)


def short_name(model: str) -> str:
    """How a model appears in cache identities: a local folder by its name (so moving the folder keeps the
    cache), a hub id as it is."""
    return Path(model).name if Path(model).exists() else model


def load_pretrained(loader: Any, model: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(model, ...)` with a one-line error when the weights cannot be had offline."""
    try:
        return loader.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:
        where = "local path" if Path(model).exists() else "model id"
        raise VisaError(
            f"cannot load {where} {model!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"download it on a connected machine (`hf download {model}`), point HF_HOME at that cache, "
            "or pass a local folder"
        ) from e


def oom_hint(error: BaseException, model: str, key: str) -> VisaError:
    """A one-line VisaError for an out-of-memory, naming the batch-size key to lower."""
    first = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    return VisaError(f"out of memory running {model} ({first}); lower {key} (e.g. {key}=8)")


def load_once(maxsize: int = 2) -> Callable[[F], F]:
    """Decorator for a loader: the model is loaded once per distinct arguments and kept (the `maxsize` most
    recent), so parts built twice in one process (a sweep, two stages on one model) share the weights."""

    def wrap(fn: F) -> F:
        return functools.lru_cache(maxsize=maxsize)(fn)  # type: ignore[return-value]

    return wrap
