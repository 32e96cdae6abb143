"""Where things lie in a reproduction folder: what the pipeline writes and the study reads back.

    preset.json        the preset as data; a re-run must match it
    parent_run.json    the MLflow parent run's id (a re-run logs into the same run)
    invocations.jsonl  one line per call that trained or evaluated: its wall time (s)
    runs/<label>/      one training run folder per method and seed (mat_dist.core.run_folder's layout)
    evals/<label>/     one evaluation folder per method and seed (mat_dist.evaluate's layout)
    evals-<N>/<label>/ a study's second stage (``--close``): the close set's every seed on N test images
    close.json         the close set, its margin and every method's first-seed union (what --close computed)
    report.md, *.png   the report (``--report-dir`` puts these elsewhere)

``<label>`` is ``run_label(method, seed)``.
"""

from __future__ import annotations

PRESET_FILE = "preset.json"
PARENT_RUN_FILE = "parent_run.json"
INVOCATIONS_FILE = "invocations.jsonl"
RUNS = "runs"
EVALS = "evals"
CLOSE_FILE = "close.json"


def close_evals(examples: int) -> str:
    """Folder of the second stage's evaluations on ``examples`` images: beside ``evals``, so that the first
    stage's evaluations stay as they are and keep matching their fingerprints."""
    return f"{EVALS}-{examples}"


def run_label(method: str, seed: int) -> str:
    """Folder name of one trained model: the method's name for seed 0 (as before seeds existed), else
    ``<method>-seed<s>``."""
    return method if seed == 0 else f"{method}-seed{seed}"
