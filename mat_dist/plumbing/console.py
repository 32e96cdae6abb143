"""What mat-dist prints on the console: counted nouns, and which Ray worker lines reach it.

Ray streams every worker's stdout and stderr to the driver and prints each line
behind its process, ``(RayTrainWorker pid=4157) ...``. ``split_batch`` sorts one
such batch of lines:

- the project's own lines (written by a worker with ``OWN_MARKER`` in front,
  e.g. rank 0's epoch lines) are printed as they are, without Ray's prefix;
- Ray's known-harmless lines (``HARMLESS``, matched by their exact message) are
  dropped;
- every other line goes to Ray's own printer unchanged, prefix and all.

``route_worker_lines()`` puts ``split_batch`` in front of Ray's printer on the
driver after ``ray.init``. Nothing here imports Ray at module level.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

OWN_MARKER = "mat-dist: "  # the start of every line a mat-dist worker writes for the console

# Ray's C++ log header in front of a core-worker message: "[2026-12-01 13:47:10,675 E 4046 4077] core_worker.cc:2465: ".
# Time, level, pid, thread and source line change from run to run; the message after it is what is matched.
_GLOG_HEADER = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEF] \d+ \d+\] [\w.]+:\d+: "
_HEX_ID = r"[0-9a-f]+"


@dataclass(frozen=True)
class HarmlessLine:
    """One line Ray prints on every run of ours that tells the user nothing they must act on."""

    source: str    # the Ray actor whose output carries it (Ray's "(SOURCE pid=...)")
    message: str   # the exact message after Ray's log header; "{id}" stands for one hex actor/object id
    why: str       # why dropping it hides nothing
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = _HEX_ID.join(re.escape(part) for part in self.message.split("{id}"))
        object.__setattr__(self, "pattern", re.compile(f"(?:{_GLOG_HEADER})?{exact}"))

    def matches(self, line: str, source: str | None) -> bool:
        return source == self.source and self.pattern.fullmatch(line.rstrip("\r\n")) is not None


HARMLESS: tuple[HarmlessLine, ...] = (
    HarmlessLine(
        source="TrainController",
        message=("Actor with class name: 'PreemptionWatcher' and ID: '{id}' has constructor arguments in the "
                 "object store and max_restarts > 0. If the arguments in the object store go out of scope or are "
                 "lost, the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more "
                 "details."),
        why=("Ray Train 2.60's controller starts a PreemptionWatcher actor (max_restarts=-1) for every worker group, "
             "and Ray Core warns about any restartable actor whose constructor arguments (here the workers' actor "
             "handles) live in the object store. The watcher only polls for node drains and logs them; a new one is "
             "started with every worker group, and mat-dist recovers from lost workers or nodes through "
             "FailureConfig and its checkpoints, never through the watcher. Printed on every Ray run, and read by "
             "new users as an error."),
    ),
)


def is_harmless(line: str, source: str | None) -> bool:
    """True when ``line`` from Ray process ``source`` (its actor or task name) is one of ``HARMLESS``."""
    return any(h.matches(line, source) for h in HARMLESS)


def split_batch(data: dict[str, Any]) -> list[str | dict[str, Any]]:
    """One batch of worker lines as Ray's driver receives it -> what to print, in order.

    A ``str`` item is one of the project's own lines, to print as it is; a
    ``dict`` item is a batch (the same keys as ``data``) for Ray's printer. Lines
    of ``HARMLESS`` are left out. Batches of the autoscaler and raylet, which
    Ray prints in its own way, pass whole.
    """
    if data.get("pid") in ("autoscaler", "raylet"):
        return [data]
    source = data.get("actor_name") or data.get("task_name")
    out: list[str | dict[str, Any]] = []
    passed: list[str] = []
    for line in data.get("lines", []):
        if line.startswith(OWN_MARKER):
            if passed:
                out.append({**data, "lines": passed})
                passed = []
            out.append(line)
        elif not is_harmless(line, source):
            passed.append(line)
    if passed:
        out.append({**data, "lines": passed})
    return out


def _routed(ray_printer: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def handle(data: dict[str, Any]) -> None:
        sink = sys.stderr if data.get("is_err") else sys.stdout
        for item in split_batch(data):
            if isinstance(item, str):
                print(item, file=sink, flush=True)
            else:
                ray_printer(item)

    handle.mat_dist_routed = True  # type: ignore[attr-defined]
    return handle


_RAY_PRINTER = "ray_print_logs"  # the name under which ray.init(log_to_driver=True) registers its printer


def route_worker_lines() -> bool:
    """Put ``split_batch`` in front of Ray's printer of worker lines; call after ``ray.init``.

    Ray 2.60 keeps that printer in a private dispatcher; where it is not found
    (another Ray layout, Ray Client, ``log_to_driver=False``) nothing changes and
    the result is False. ``ray.shutdown`` removes the routed printer with Ray's.
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    handlers = getattr(dispatcher, "handlers", None)
    if not isinstance(handlers, list):
        return False
    printers = [handler for name, handler in handlers if name == _RAY_PRINTER]
    if len(printers) != 1:
        return False
    if getattr(printers[0], "mat_dist_routed", False):
        return True
    dispatcher.remove_handler(_RAY_PRINTER)
    dispatcher.add_handler(_RAY_PRINTER, _routed(printers[0]))
    return True


def plural(count: float | str, noun: str, many: str | None = None) -> str:
    """``"1 epoch"``, ``"3 epochs"``, ``"0.5 CPUs"``; ``many`` for irregular plurals. A ``count`` given as text
    (an elastic width, ``"1..2"``) is plural."""
    shown = f"{count:g}" if isinstance(count, float) else count
    return f"{shown} {noun if count == 1 else many or noun + 's'}"
