"""What the entry points (`python -m visa.run`, `python -m visa.train`) share: a failure the user can fix ends
the command with one line on stderr instead of a stack trace."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from omegaconf.errors import OmegaConfBaseException

from visa.core.errors import Interrupted, VisaError

T = TypeVar("T")


def _stop(line: str, status: int) -> NoReturn:
    print(line, file=sys.stderr)
    sys.exit(status)


def run_command(body: Callable[[], T], interrupted: str) -> T:
    """`body()`, its failures translated: a `VisaError` -> `error: ...` (status 1), a config error ->
    `error: config: <its first line>` (1), Ctrl-C or a stop signal -> `interrupted: ...` (128 + the signal:
    130 for Ctrl-C, 143 for SIGTERM) with what an `Interrupted` says was kept, else with `interrupted`, this
    command's own word on resuming."""
    try:
        return body()
    except VisaError as e:
        _stop(f"error: {e}", 1)
    except OmegaConfBaseException as e:
        _stop(f"error: config: {str(e).splitlines()[0]}", 1)
    except KeyboardInterrupt as e:  # Ctrl-C, or a scheduler's stop signal (visa.entry.stop_signals)
        signum = getattr(e, "signum", signal.SIGINT)
        name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        saved = e if isinstance(e, Interrupted) else interrupted
        _stop(f"interrupted{name}: {saved}", 128 + signum)  # the shell's status for that signal
