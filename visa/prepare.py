"""`python -m visa.prepare [key=value ...]`: do once, now, what the first run of a config would do before its
first result: read each local GGUF model file of its generators into a transformers folder under the model
cache (`VISA_MODEL_CACHE`, default ~/.cache/visa/models; about 30-50 s for the demo's SmolLM2 on 2 cores).
`install.sh` runs it for the default (demo) config, so a newcomer's first `python -m visa.run` starts
generating at once. Other configs: the same overrides as `visa.run` (e.g. `answer_mllm=demo_llm`)."""

from __future__ import annotations

import sys
from pathlib import Path

from visa import entry
from visa.cli import run_command
from visa.config import GROUPS, instantiate_part, register
from visa.core.errors import VisaError

CONF = Path(__file__).resolve().parents[1] / "conf"


def prepare(overrides: list[str]) -> list[str]:
    """Prepare every part of the composed config that has something to prepare; what was prepared."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    register()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except HydraException as e:
        raise VisaError(f"config: {str(e).splitlines()[0]}") from None
    done = []
    for group in GROUPS:
        node = cfg.get(group)
        # only generators read from a local GGUF file need preparing; nothing else is built
        if node is None or not node.get("gguf_file"):
            continue
        part = instantiate_part(cfg, group)
        done.append(f"{group}: {part.prepare()}")
    return done


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    with entry.stop_signals():  # a Ctrl-C leaves no half-written model folder (visa.generation.gguf)
        done = run_command(lambda: prepare(argv), "nothing kept; run the same command again")
    print("\n".join(done) if done else "nothing to prepare: no generator of this config reads a GGUF file")


if __name__ == "__main__":
    main(sys.argv[1:])
