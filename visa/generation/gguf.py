"""Local GGUF model files, read once by transformers (de-quantised, slow) and kept as transformers folders
under the model cache ($VISA_MODEL_CACHE, default ~/.cache/visa/models), so every later load is a plain
folder read (`visa.generation.hf_loading.load_text_model`; `python -m visa.prepare` does it at install)."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def converted_models_dir() -> Path:
    """Where GGUF files read once are kept as transformers folders: $VISA_MODEL_CACHE, else the user's
    cache folder (e.g. ~/.cache/visa/models). Apart from the results cache, so an empty results cache
    (a new VISA_CACHE) does not convert again."""
    if os.environ.get("VISA_MODEL_CACHE"):
        return Path(os.environ["VISA_MODEL_CACHE"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("visa")) / "models"


def converted_folder(model: str, gguf_file: str) -> Path | None:
    """The folder a local GGUF file is (or will be) kept in, named by the file and what identifies its
    content (size, modification time) and the reader (transformers' version); None for a hub id."""
    import transformers

    path = Path(model).expanduser() / gguf_file
    if not path.is_file():
        return None
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return converted_models_dir() / f"{path.stem}-{digest}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_abandoned(folder: Path) -> None:
    """Half-written copies of `folder` left by a process that was killed (SIGKILL, a lost node) while
    writing: never read (only a renamed, complete folder is), removed so that they do not pile up."""
    for partial in folder.parent.glob(f"{folder.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def keep_converted(folder: Path, tokenizer, lm) -> None:
    """Save a model read from GGUF as a transformers folder (written aside, then renamed, so a reader never
    sees half a folder; a Ctrl-C while writing removes the half-written copy). A folder that cannot be
    written only costs the next run the conversion again."""
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        _remove_abandoned(folder)
        from safetensors.torch import save_model

        tokenizer.save_pretrained(partial)
        # transformers will not save a model it read from GGUF (`save_pretrained` refuses quantised models),
        # but the values are de-quantised already: the plain config, generation settings and weights suffice
        config = copy.deepcopy(lm.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(partial)
        lm.generation_config.save_pretrained(partial)
        save_model(lm, str(partial / "model.safetensors"), metadata={"format": "pt"})  # tied weights once
        partial.rename(folder)
    except OSError as e:
        if (folder / "config.json").is_file():  # another process kept it first
            return
        log.warning(
            "could not keep the converted model in %s (%s); the next run converts it again", folder, e
        )
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # left over when another process renamed first
