"""What `python -m visa.run` does around Hydra, so that what a user (or a scheduler) does to the command ends
in one line:

- the command line is looked at before Hydra sees it: a secret typed there is refused before Hydra saves it
  in `.hydra/overrides.yaml`; a key the config does not have (`+foo=1`, `+questions.nmu=1,2` in a sweep,
  `+reranker=demo` before such a group exists) is refused with the nearest valid key, since Hydra would
  add it with `+` and the run would ignore it; and a value starting with `~` (`dataset.root=~/photos`, which
  Hydra's grammar does not take) becomes the home folder's path, as a shell would expand it;
- Hydra's own errors (a wrong type for a top-level setting, an unknown config option, an override Hydra
  cannot parse) are printed as one line `error: config: ...` instead of Hydra's several lines, and so is a
  sweep job that failed under submitit (`hydra/launcher=local|slurm`): its own error line and its log;
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

import dataclasses
import difflib
import errno
import os
import re
import signal
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visa.config import CONF, ENV_NAME, VisaConfig, is_secret_key, options_taking, unknown_key
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


def _config_dirs(argv: list[str]) -> list[Path]:
    """The run's config root and the folders `--config-dir` / `-cd` add to it."""
    dirs = [CONF]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]).expanduser())
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]).expanduser())
    return dirs


def _settings_keys(cls: type, prefix: str = "") -> dict[str, type | None]:
    """Each key of a structured config, dotted (`questions.num`), with its dataclass where it is one."""
    keys: dict[str, type | None] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        hint = hints.get(f.name)
        nested = hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None
        keys[name] = nested
        if nested is not None:
            keys.update(_settings_keys(nested, name + "."))
    return keys


def _nearest(word: str, options: list[str]) -> str | None:
    """The option nearest to a mistyped `word`, compared whole (`retreival` -> `retrieval`) or, failing
    that, with the last part of a dotted option (`top_k` -> `retrieval.top_k`); a word that starts one
    option alone is that option (`idle` -> `idle_seconds`)."""
    starting = [o for o in options if o.startswith(word)]
    if len(starting) == 1:
        return starting[0]
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if match:
        return match[0]
    leaves = {o.rsplit(".", 1)[-1]: o for o in options if "." in o}
    match = difflib.get_close_matches(word, list(leaves), n=1, cutoff=0.6)
    return leaves[match[0]] if match else None


def check_key(arg: str, key: str, config_dirs: list[Path]) -> None:
    """Refuse an override whose key the config does not have (`arg`: the key as typed, `+` included). The
    schema (`VisaConfig`: the groups and the run's settings, nested) and the config groups (folders of the
    config root: `experiment`, `sweep`) name every valid key; a part's own keys (`dataset.limit`) are
    checked against its class once it is composed (`visa.config.check_part`), Hydra's (`hydra.*`,
    `hydra/launcher`) by Hydra."""
    top = key.split(".")[0]
    if "/" in key or "@" in key or top == "hydra":  # Hydra's own, a group path, a package: Hydra checks
        return
    keys = _settings_keys(VisaConfig)
    groups = sorted({d.name for root in config_dirs if root.is_dir() for d in root.iterdir() if d.is_dir()})
    tops = [k for k in keys if "." not in k] + [g for g in groups if g not in keys and g != "hydra"]
    if top not in tops:
        near = _nearest(top, tops + [k for k in keys if "." in k])
        hint = f"did you mean {near}? " if near else ""
        raise VisaError(
            f"{arg}: the config has no key {top}; {hint}its keys: {', '.join(tops)} "
            "(python -m visa.run --help lists each group's options)"
        )
    parts = key.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if keys.get(parent) is None:  # a part (checked against its class), a list, a value
            return
        if ".".join(parts[: depth + 1]) not in keys:
            siblings = [k for k in keys if k.rsplit(".", 1)[0] == parent and k.count(".") == depth]
            near = _nearest(parts[depth], [k.rsplit(".", 1)[-1] for k in siblings])
            hint = f"did you mean {parent}.{near}? " if near else ""
            names = ", ".join(k.rsplit(".", 1)[-1] for k in siblings)
            raise VisaError(f"{arg}: {parent} has no key {parts[depth]}; {hint}its keys: {names}")


def check_command_line(argv: list[str]) -> list[str]:
    """The overrides of `argv` with `~` expanded; a secret given there stops the command (VisaError) before
    Hydra writes it to `.hydra/overrides.yaml` (its value is never echoed), and so does a key the config
    does not have (`check_key`), with or without `+`, in a run or a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    config_dirs = _config_dirs(argv)
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
        if not key.startswith("~"):  # a deletion of a key that is not there: Hydra says so
            check_key(key, bare, config_dirs)  # named without its value, which may be a secret
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


_APPEND_HINT = re.compile(r"To append to your config use \+(\S+)")


def part_key_line(error: BaseException) -> str | None:
    """Hydra's "Could not override 'normalizer.bank'. To append to your config use +normalizer.bank=demo"
    for a key that the chosen part's yaml does not set, as one line that leads somewhere: the options of the
    group that take the key (normalizer=none has no bank), else the nearest key the part has; adding it
    with `+` is right only for a setting of the part's class that its yaml leaves out. None for any other
    error."""
    from omegaconf import DictConfig

    cause, hint = error.__cause__, _APPEND_HINT.search(str(error))
    parent = getattr(cause, "parent_node", None)
    full_key = getattr(cause, "full_key", None)
    if hint is None or not isinstance(parent, DictConfig) or not isinstance(full_key, str):
        return None
    if "_target_" not in parent or "." not in full_key:  # not a part's key: Hydra's line is right
        return None
    where, key = full_key.rsplit(".", 1)
    override = hint.group(1)
    line = f"{override}: the chosen {where} ({parent._target_}) sets no key {key}"
    others = options_taking(where, key) if "." not in where else []
    if others:  # e.g. normalizer.bank under normalizer=none
        choices = "|".join(others)
        return f"{line}; choose a {where} that takes it: {where}={choices} ({where}={others[0]} {override})"
    keys = [str(k) for k in parent if not str(k).startswith("_")]
    fix = unknown_key(where, key, keys)
    if fix:
        return f"{line}; {fix}"
    return (
        f"{line} (it sets {', '.join(keys) or 'none'}); a setting of its class that the yaml leaves out is "
        f"added with +{override}"
    )


_SUBMITIT_JOB = re.compile(r"Job (\S+) \(task: (\d+)\) with path (\S+)")


def failed_job_line(error: BaseException) -> str | None:
    """submitit's report of a sweep job that ended without a result (its several lines: the job, the state,
    the job's whole error stream) as one line: the job's own last line of error and where its output is.
    None for any other error."""
    if not type(error).__module__.startswith("submitit") or type(error).__name__ != "UncompletedJobError":
        return None
    text = str(error)
    job = _SUBMITIT_JOB.search(text)
    stream = text.split("Error stream produced:", 1)[-1] if "Error stream produced:" in text else ""
    lines = [line.strip() for line in stream.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    said = next((line for line in reversed(lines) if line.startswith(("error:", "interrupted"))), None)
    said = said or (lines[-1] if lines else text.splitlines()[0])
    if job is None:
        return f"a sweep job failed: {said}"
    log = Path(job.group(3)).with_name(f"{job.group(1)}_{job.group(2)}_log.err")
    return (
        f"sweep job {job.group(1)} failed: {said.removeprefix('error: ')} (its output: {log}, .out beside it)"
    )


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
        print(f"error: config: {part_key_line(e) or one_line(e)}", file=sys.stderr)
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
    except Exception as e:  # a sweep job under submitit (hydra/launcher=local, slurm) that failed
        line = failed_job_line(e)
        if line is None or user_asked == "1":
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(1)
    finally:
        if user_asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_asked
