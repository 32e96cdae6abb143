"""What reaches the console of a Ray run: Ray's known-harmless lines dropped by exact message, the project's
own lines without Ray's process prefix, everything else untouched; counted nouns in the singular for one."""

from __future__ import annotations

import pytest

from mat_dist.plumbing.console import HARMLESS, OWN_MARKER, is_harmless, plural, route_worker_lines, split_batch

# As Ray 2.60 printed it on `matd train` (the controller's stderr, behind "(TrainController pid=4046) ").
WATCHER = ("[2026-12-01 13:47:10,675 E 4046 4077] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
           "and ID: '2e472f5069ba6018e72c4a1c01000000' has constructor arguments in the object store and "
           "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor restart "
           "will fail. See https://github.com/ray-project/ray/issues/53727 for more details.")
EPOCH = (f"{OWN_MARKER}epoch 1/2: loss 4.665  clean 10.0%  PGD robust l1 5.0 l2 5.0 linf 5.0 all 5.0  "
         "(4.0 s, 1 worker)")


def batch(lines: list[str], *, actor: str = "RayTrainWorker", is_err: bool = False) -> dict:
    """One batch as Ray's driver receives it from a worker's log stream."""
    return {"ip": "10.0.0.1", "localhost": "10.0.0.1", "pid": 4157, "job": "01000000", "actor_name": actor,
            "task_name": None, "is_err": is_err, "lines": lines}


def test_every_harmless_line_says_why() -> None:
    assert HARMLESS and all(h.source and h.message and len(h.why) > 40 for h in HARMLESS)


@pytest.mark.parametrize("line", [
    WATCHER,
    WATCHER.replace("2e472f5069ba6018e72c4a1c01000000", "ffffffffffffffff0000000001000000"),  # another actor id
    WATCHER.replace("13:47:10,675 E 4046 4077] core_worker.cc:2465", "09:01:02,003 W 12 13] core_worker.cc:2470"),
    WATCHER.split("core_worker.cc:2465: ", 1)[1],  # the message without Ray's log header
    WATCHER + "\n",
], ids=["as-printed", "other-id", "other-header", "no-header", "newline"])
def test_the_known_harmless_message_is_dropped(line: str) -> None:
    assert is_harmless(line, "TrainController")
    assert split_batch(batch([line], actor="TrainController", is_err=True)) == []


@pytest.mark.parametrize("line, source", [
    (WATCHER, "MyActor"),                                                    # the same text from someone else's actor
    (WATCHER.replace("'PreemptionWatcher'", "'MyWatcher'"), "TrainController"),   # another actor class
    (WATCHER.replace("max_restarts > 0", "max_restarts > 1"), "TrainController"),
    (WATCHER + " Also: the GCS is down.", "TrainController"),                 # something appended
    ("Note: " + WATCHER.split("core_worker.cc:2465: ", 1)[1], "TrainController"),  # something put in front
    (WATCHER.replace("ID: '2e472f5069ba6018e72c4a1c01000000'", "ID: ''"), "TrainController"),
    ("[2026-12-01 13:47:10,675 E 4046 4077] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
     "died unexpectedly", "TrainController"),
], ids=["other-source", "other-class", "other-number", "appended", "prefixed", "empty-id", "other-message"])
def test_similar_but_different_lines_are_kept(line: str, source: str) -> None:
    assert not is_harmless(line, source)
    assert split_batch(batch([line], actor=source, is_err=True)) == [batch([line], actor=source, is_err=True)]


def test_own_lines_come_out_bare_in_order_and_the_rest_goes_to_ray() -> None:
    data = batch(["torch warning", EPOCH, WATCHER, "another Ray line", f"{OWN_MARKER}epoch 2/2: ..."])
    # The watcher's message is dropped only from the controller that starts the watcher, not from this worker.
    assert split_batch(data) == [batch(["torch warning"]), EPOCH, batch([WATCHER, "another Ray line"]),
                                 f"{OWN_MARKER}epoch 2/2: ..."]


def test_autoscaler_and_raylet_batches_pass_whole() -> None:
    for pid in ("autoscaler", "raylet"):
        data = {**batch([EPOCH, WATCHER]), "pid": pid, "actor_name": None}
        assert split_batch(data) == [data]


def test_routed_printer_strips_ray_s_prefix_from_epoch_lines_only(monkeypatch, capsys) -> None:
    """Ray's own printer and dispatcher (no runtime): the epoch line loses "(RayTrainWorker pid=...)"; Ray's
    other lines keep it; the harmless line never prints."""
    from ray._private import ray_logging
    from ray._private.worker import print_worker_logs

    dispatcher = ray_logging.WorkerStandardStreamDispatcher()
    dispatcher.add_handler("ray_print_logs", lambda data: print_worker_logs(data, __import__("sys").stdout))
    monkeypatch.setattr(ray_logging, "global_worker_stdstream_dispatcher", dispatcher)
    monkeypatch.setenv("RAY_COLOR_PREFIX", "0")
    assert route_worker_lines() and route_worker_lines()  # the second call does not wrap twice
    assert len(dispatcher.handlers) == 1
    dispatcher.emit(batch([EPOCH, "a torch warning"]))
    dispatcher.emit(batch([WATCHER], actor="TrainController"))
    assert capsys.readouterr().out.splitlines() == [EPOCH, "(RayTrainWorker pid=4157) a torch warning"]


def test_without_ray_s_printer_nothing_changes(monkeypatch) -> None:
    from ray._private import ray_logging

    dispatcher = ray_logging.WorkerStandardStreamDispatcher()  # log_to_driver=False, or Ray Client
    monkeypatch.setattr(ray_logging, "global_worker_stdstream_dispatcher", dispatcher)
    assert not route_worker_lines()
    assert dispatcher.handlers == []


@pytest.mark.parametrize("count, noun, expected", [
    (1, "epoch", "1 epoch"), (3, "epoch", "3 epochs"), (0, "trial", "0 trials"), (1, "worker", "1 worker"),
    ("1..2", "worker", "1..2 workers"), (1.0, "CPU", "1 CPU"), (0.5, "CPU", "0.5 CPUs"), (2.0, "GPU", "2 GPUs"),
])
def test_plural(count, noun, expected) -> None:
    assert plural(count, noun) == expected
