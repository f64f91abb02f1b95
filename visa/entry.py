"""What `python -m visa.run` does around Hydra, so that what a user (or a scheduler) does to the command ends
in one line:

- the command line is looked at before Hydra sees it: a secret typed there is refused before Hydra saves it
  in `.hydra/overrides.yaml`, and a value starting with `~` (`dataset.root=~/photos`, which Hydra's
  grammar does not take) becomes the home folder's path, as a shell would expand it;
- Hydra's own errors (a wrong type for a top-level setting, an unknown config option, an override Hydra
  cannot parse) are printed as one line `error: config: ...` instead of Hydra's several lines;
- a scheduler's stop signal (SIGTERM, which SLURM sends before SIGKILL at preemption and at the time limit;
  SIGUSR2, the usual `--signal` for a warning before the time limit) stops a run the way Ctrl-C does, with
  the same line saying what was saved and how to resume, and a second Ctrl-C or signal while the run closes
  its cache and servers is ignored (no traceback, nothing left half-closed). A signal the process started
  with ignored is taken over too: a shell starts a script's background commands (`cmd &`, as a CI runner or
  a batch script does) with SIGINT ignored, and `kill -INT` must still stop such a run and keep its results.
  A signal whose Python handler someone else installed (submitit installs its own for SIGUSR2 and SIGTERM:
  it requeues the job) is left alone.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from visa.config import ENV_NAME, is_secret_key
from visa.core.errors import VisaError

# -- the command line, before Hydra -----------------------------------------------------------------------
_HOME_VALUE = re.compile(r"(^|,)~(?=/|,|$)")  # `~` opening a value (or one element of a sweep a,b)
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_/.+-]*")  # characters Hydra's grammar takes in an unquoted value


def _expand_home(value: str) -> str:
    """`~` opening the value (or an element of a sweep) replaced by the home folder, as a shell would."""
    home = os.path.expanduser("~")
    if _PLAIN_PATH.fullmatch(home):
        return _HOME_VALUE.sub(lambda m: m.group(1) + home, value)
    # a home folder with spaces or quotes: one value goes quoted (Hydra's grammar), a sweep as it is
    quoted = home.replace("\\", "\\\\").replace("'", "\\'")
    return value if "," in value else "'" + quoted + value[1:] + "'"


def _secret_in(key: str, value: Any) -> str | None:
    """The dotted key holding a secret in `key=value` (a value may be a mapping), or None."""
    if is_secret_key(key):
        return key
    if isinstance(value, dict):
        for inner, inner_value in value.items():
            found = _secret_in(f"{key}.{inner}", inner_value)
            if found:
                return found
    return None


def check_command_line(argv: list[str]) -> list[str]:
    """The overrides of `argv` with `~` expanded; a secret given there stops the command (VisaError) before
    Hydra writes it to `.hydra/overrides.yaml`. Its value is never echoed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:  # a Hydra flag (-m, --cfg job, ...) or its value
            out.append(arg)
            continue
        key, value = arg.split("=", 1)
        if _HOME_VALUE.match(value):
            value = _expand_home(value)
            arg = f"{key}={value}"
        bare = key.lstrip("+~")
        try:
            parsed: Any = parser.parse_override(arg).value()
        except (HydraException, ValueError):  # Hydra reports it, as one line (see `main`)
            parsed = None
        secret = _secret_in(bare, parsed)
        if secret:
            raise VisaError(
                f"{secret}: secrets are not taken from the command line (Hydra would save it in the run "
                "folder's .hydra/overrides.yaml); put the key in an environment variable and name that "
                "variable, e.g. question_llm.api_key_env=OPENAI_API_KEY"
            )
        if bare.endswith("_env") and isinstance(parsed, str) and not ENV_NAME.fullmatch(parsed):
            raise VisaError(
                f"{bare} must be the name of an environment variable (letters, digits, _), not its value"
            )
        out.append(arg)
    return out


# -- Hydra's errors as one line -----------------------------------------------------------------------------
_DETAIL = re.compile(r"^(full_key:|reference_type=|object_type=|See https://hydra\.cc|Config search path:)")


def one_line(error: BaseException) -> str:
    """Hydra's message (and the OmegaConf error under it) on one line: list items joined with commas,
    OmegaConf's location lines and Hydra's search path left out."""
    pieces: list[str] = []
    seen = set()
    for e in (error, error.__cause__):
        if e is None or str(e) in seen:
            continue
        seen.add(str(e))
        lines = [line.strip() for line in str(e).splitlines()]
        listing: list[str] | None = None
        for line in lines:
            if not line or _DETAIL.match(line) or line.startswith("provider="):
                if line.startswith("Config search path:"):
                    break
                continue
            if line.endswith(":") and not line.startswith("^"):
                listing = []
                pieces.append(line[:-1] + ": ")
                continue
            if set(line) <= {"^", " "}:  # the caret under an override: the override itself is named
                continue
            if listing is not None:
                listing.append(line)
                pieces[-1] = pieces[-1].split(": ")[0] + ": " + ", ".join(listing)
                continue
            pieces.append(line)
    pieces = [p.rstrip(": ") for p in pieces]
    override = getattr(error, "override", None)  # an override Hydra could not parse: name it first
    if isinstance(override, str) and override not in " ".join(pieces):
        pieces.insert(0, override)
    if pieces and pieces[0].startswith("Error merging override "):  # "key=value: why"
        head = pieces[0].removeprefix("Error merging override ")
        return head + (": " + "; ".join(pieces[1:]) if pieces[1:] else "")
    return "; ".join(pieces)


# -- stop signals ------------------------------------------------------------------------------------------
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR2")


class Stop(KeyboardInterrupt):
    """A stop signal raised in the main thread (Ctrl-C's KeyboardInterrupt, for SIGTERM / SIGUSR2 too)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Stopping:
    def __init__(self) -> None:
        self.stopped: int | None = None
        self.signals: list[signal.Signals] = []

    def __call__(self, signum: int, frame: Any) -> None:
        if self.stopped is not None:
            return  # the run is closing its cache and servers: a second signal would leave them half-closed
        self.stopped = signum
        # From now on the operating system drops them: Python's shutdown puts its own handlers back to the
        # default (which kills the process, status -2 instead of 130) but leaves an ignored signal ignored.
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN)
        raise Stop(signum)


def _default(sig: signal.Signals) -> Any:
    return signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL


@contextmanager
def stop_signals() -> Iterator[_Stopping]:
    """Within: SIGINT, SIGTERM and SIGUSR2 raise `Stop` once (where their handler is Python's default, or the
    signal was ignored when the process started), then are ignored until the process ends. The handlers are
    restored on the way out unless a stop came."""
    handler = _Stopping()
    previous: dict[signal.Signals, Any] = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        current = signal.getsignal(sig)
        # Python's default, ignored (inherited from a shell's background job), or this module's from an
        # earlier run in this process; not someone else's
        if current in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler) or isinstance(
            current, _Stopping
        ):
            previous[sig] = current if current is signal.SIG_IGN else _default(sig)
            signal.signal(sig, handler)
            handler.signals.append(sig)
    try:
        yield handler
    finally:
        if handler.stopped is None:
            for sig, current in previous.items():
                signal.signal(sig, current)


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by `signum`: 130 SIGINT, 143 SIGTERM, 140 SIGUSR2."""
    return 128 + signum


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def main(hydra_main: Callable[[], Any]) -> None:
    """Run the Hydra entry point `hydra_main` with the command line checked first and Hydra's errors as one
    line (HYDRA_FULL_ERROR=1, set by the user, shows Hydra's own report instead)."""
    try:
        sys.argv[1:] = check_command_line(sys.argv[1:])
    except VisaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    user_asked = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors here instead of printing several lines
    try:
        hydra_main()
    except (HydraException, OmegaConfBaseException) as e:
        if user_asked == "1":
            raise
        print(f"error: config: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # Hydra writing the run folder (.hydra/, the log) on a full or read-only disk
        if user_asked == "1" or e.errno not in _DISK_ERRORS:
            raise
        print(
            f"error: cannot write {e.filename or 'the run folder'}: {e.strerror}; free space or fix its "
            "permissions, or point hydra.run.dir (hydra.sweep.dir for -m) at another disk",
            file=sys.stderr,
        )
        sys.exit(1)
    finally:
        if user_asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_asked
