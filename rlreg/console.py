"""What reaches the console. rlreg's own lines and one progress bar per stage; what the engines,
learner ranks and reward actors print goes to RUN_DIR/logs/<role>-<pid>.log (the libraries they
load print warnings meant for their own developers). `-v/--verbose` (or RLREG_VERBOSE=1) brings all
of it back to the console; `quiet()` silences rlreg's own lines too (RLRegressor's default)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys

VERBOSE_ENV = "RLREG_VERBOSE"
# The run's log directory, handed to every compute actor through its environment (actor_env).
LOG_DIR_ENV = "RLREG_LOG_DIR"

_quiet = False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    # An environment variable, not a module flag: Ray Tune trials and actors are other processes.
    os.environ[VERBOSE_ENV] = "1" if on else "0"


@contextlib.contextmanager
def quiet(on: bool = True):
    """rlreg's own lines and bars off inside the block (errors still raise)."""
    global _quiet
    before, _quiet = _quiet, on
    try:
        yield
    finally:
        _quiet = before


def say(*parts, **kw) -> None:
    if not _quiet:
        print(*parts, **kw)


def warn(message: str) -> None:
    """rlreg's own warnings: to stderr, even when quiet."""
    print(f"rlreg: warning: {message}", file=sys.stderr, flush=True)


def progress(total: int, desc: str, initial: int = 0):
    """One tqdm bar per stage; redrawn rarely when output is not a terminal (CI logs, `ray job
    logs`); off when quiet."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, disable=_quiet,
                mininterval=0.2 if interactive else 30.0)


def hush_libraries() -> None:
    """Driver side, before the libraries load: their progress bars and info lines off (not in
    verbose mode). Environment variables, read at import (transformers' bars follow the hub's)."""
    if verbose():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    hf = sys.modules.get("transformers.utils.logging")  # already loaded: the variables came too late
    if hf is not None:
        hf.disable_progress_bar()
        hf.set_verbosity_error()
    for name in ("ray", "vllm", "deepspeed", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def use_log_dir(path) -> None:
    """Actors started from now on in this process log under `path` (RUN_DIR/logs)."""
    os.environ[LOG_DIR_ENV] = os.path.abspath(os.fspath(path))


def log_file(role: str) -> str | None:
    """This process's log file for `role` when the run has a log directory (None otherwise)."""
    folder = os.environ.get(LOG_DIR_ENV)
    return os.path.join(folder, f"{role}-{os.getpid()}.log") if folder else None


def redirect_actor_output(role: str) -> str | None:
    """Inside an actor, first thing: send its stdout and stderr (file descriptors 1 and 2, so the
    C++ and subprocess output too) to its log file. Verbose mode, or no log directory: left as is."""
    path = log_file(role)
    if path is None or verbose():
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)  # on another node of a cluster too
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return path
