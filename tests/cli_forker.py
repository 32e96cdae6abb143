"""Run many ``matd`` command lines, each in its own forked process, paying the import of torch once.

A test of bad inputs runs dozens of command lines; as ``python -m mat_dist.cli.main`` subprocesses each
one spends 2-3 s of CPU importing torch before it reaches its one-line error. This script imports the CLI
once, then forks one child per command line (a few at a time): every child is a separate process with its
own working folder, environment, exit code and stderr, as a user's command would be, started from an
interpreter in which no thread has started yet (nothing at import time starts Ray, MLflow or torch's pools).

    python tests/cli_forker.py < jobs.json > results.json

jobs.json: [{"cwd": ..., "args": [...], "env": {...}, "stdout": path, "stderr": path}, ...]
results.json: [exit code per job, in order]. Each child writes its stdout and stderr to the paths given.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

MAX_CHILDREN = 4


def _child(job: dict) -> None:
    """Become the command line of ``job``; never returns."""
    code = 1
    try:
        out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(job["cwd"])
        os.environ.update(job["env"])
        sys.argv = ["matd", *job["args"]]
        from mat_dist.cli.main import main

        try:
            main()
            code = 0
        except SystemExit as exit_:  # what the interpreter would make of it
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
    except BaseException:  # noqa: BLE001 - an uncaught error: the traceback a user would see, exit 1
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(jobs: list[dict]) -> list[int]:
    codes: list[int | None] = [None] * len(jobs)
    running: dict[int, int] = {}  # pid -> job index
    pending = list(range(len(jobs)))
    while pending or running:
        while pending and len(running) < MAX_CHILDREN:
            index = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(jobs[index])
            running[pid] = index
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    return [int(c) for c in codes]


if __name__ == "__main__":
    jobs = json.load(sys.stdin)
    columns = next((job["env"]["COLUMNS"] for job in jobs if "COLUMNS" in job["env"]), None)
    if columns is not None:
        os.environ["COLUMNS"] = columns  # before the import: a console may read the width once
    import mat_dist.cli.main  # noqa: F401 - the shared import the children inherit

    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # a fork copies no thread but the caller: a lock another one held would never be released
        sys.exit(f"cli_forker: importing the CLI started {threads - 1} thread(s); forking now is not safe")
    json.dump(run(jobs), sys.stdout)
