"""`python:` checks: a function of the user's, in a file beside the scenario, loaded once
at load time and called in a worker thread, one call at a time, bounded in time.

`python: "mychecks:polite"` names the function `polite` of `mychecks.py` (a dotted name is a
path: `checks.tone:polite` is `checks/tone.py`). It is called as
`polite(reply, turn, conversation)` and returns a bool or `(bool, reason)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import importlib.util
import inspect
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.errors import ApiError, Kind

TIMEOUT_S = 30.0  # a call that takes longer is an error of kind check_timeout
NAME = "a string MODULE:FUNCTION (a function of MODULE.py beside the scenario)"


@dataclass(frozen=True, slots=True)
class PythonCheck:
    """A loaded check function and how the scenario named it."""

    name: str  # "mychecks:polite", as written
    function: Callable[..., Any] = field(compare=False)
    lock: Any = field(compare=False)  # its module's: one call into a module at a time
    path: str = field(default="", compare=False)  # its file (hashed into the manifest)


# each file is imported once per process, whoever names it, with the lock of its calls
_modules: dict[Path, tuple[Any, threading.Lock]] = {}


CHECK_PARAMS = ("reply", "turn", "conversation")
WORDS = {1: "one", 2: "two", 3: "three"}


def load(spec: str, scenario_file: str, params: tuple[str, ...] = CHECK_PARAMS) -> PythonCheck:
    """The function SPEC names, its file beside SCENARIO_FILE, callable with PARAMS (a
    check's, or a tool result's: args, vars); ValueError saying what is wrong (no such
    file, an import that fails, no such function, the wrong parameters)."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name.strip() or not function_name.isidentifier():
        raise ValueError(f"'python' must be {NAME}, got {spec!r}")
    relative = Path(*module_name.strip().split(".")).with_suffix(".py")
    path = (Path(scenario_file).parent / relative).resolve()
    if not path.is_file():
        raise ValueError(f"'python': no file {relative} beside the scenario (looked for {path})")
    module, lock = _import(path, relative)
    function = getattr(module, function_name, None)
    if function is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(function_name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"'python': {relative} has no function '{function_name}'{hint}")
    try:
        inspect.signature(function).bind(*params)
    except TypeError:
        said = ", ".join(params)
        raise ValueError(
            f"'python': {spec} must take {WORDS[len(params)]} arguments ({said})"
        ) from None
    except ValueError:  # a callable whose signature cannot be read: trust it
        pass
    return PythonCheck(spec, function, lock, str(path))


def _import(path: Path, relative: Path) -> tuple[Any, threading.Lock]:
    if path in _modules:
        return _modules[path]
    name = f"dialogue_runner_checks_{len(_modules)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"'python': {relative} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # its own code: any failure is the scenario's problem
        del sys.modules[name]
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ValueError(f"'python': importing {relative} failed: {last_line(exc)}") from None
    _modules[path] = (module, threading.Lock())
    return _modules[path]


def last_line(exc: BaseException) -> str:
    """The traceback's last line (`ValueError: boom`), and where the innermost frame was."""
    text = traceback.format_exception_only(type(exc), exc)[-1].strip()
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({Path(exc.filename).name}:{exc.lineno})"
    if not frames:
        return text
    last = frames[-1]
    return f"{text} ({Path(last.filename).name}:{last.lineno} in {last.name})"


async def run(check: PythonCheck, reply: str, turn: Any, conversation: Any) -> tuple[bool, str]:
    """(passed, reason) from what the function returned; ApiError for an exception
    (check_error), a value of another shape (check_error) or a call past TIMEOUT_S
    (check_timeout): an error, never a pass."""
    value = await _in_thread(check, (reply, turn, conversation))
    return _verdict(check.name, value)


async def call(check: PythonCheck, *args: Any) -> Any:
    """What the function returns for ARGS, in a worker thread as a check is called;
    ApiError (check_error, check_timeout) when it raises or does not return in time."""
    return await _in_thread(check, args)


def _verdict(name: str, value: Any) -> tuple[bool, str]:
    if isinstance(value, bool):
        return value, f"{name} returned {value}"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bool):
        return value[0], str(value[1])
    shown = repr(value)[:80]
    raise ApiError(Kind.CHECK_ERROR, f"{name} returned {shown}, not a bool or (bool, reason)")


async def _in_thread(check: PythonCheck, args: tuple[Any, ...]) -> Any:
    """Call the function in a daemon thread (one call of it at a time, so that module state
    is safe): the event loop goes on meanwhile, and a call that never returns holds neither
    the run nor the process's exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(value)
        else:
            done.set_exception(error)

    def call() -> None:
        with check.lock:
            try:
                value, error = check.function(*args), None
            except BaseException as exc:  # SystemExit too: the check fails, not the thread
                value, error = None, ApiError(Kind.CHECK_ERROR, last_line(exc))
        with contextlib.suppress(RuntimeError):  # the run ended (and its loop) meanwhile
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=call, name=f"check {check.name}", daemon=True).start()
    try:
        return await asyncio.wait_for(done, TIMEOUT_S)  # cancelled on time out: settles nothing
    except TimeoutError:
        message = f"{check.name} took more than {TIMEOUT_S:g} s"
        raise ApiError(Kind.CHECK_TIMEOUT, message) from None
