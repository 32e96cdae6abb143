"""The sharded runner: same rows on 1 and 2 workers, retries of killed workers, resume, exactly-once merge."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from evaluate_helpers import RADII, ray_session, tiny_model_path, workdir
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.evaluator import evaluate
from mat_dist.evaluate.runner import Chaos, ShardsFailed
from mat_dist.evaluate.shards import SHARDS_DIR, merge_shards, plan_shards
from mat_dist.evaluate.suite import plan_jobs, suite_from_dict

N = 40


def small_suite(**changes):
    raw = {
        "name": "tiny", "examples": N, "shard_size": 10, "seed": 3, "eps": RADII,
        "resources": {"num_cpus": 1, "max_retries": 1},
        "attacks": {
            "pgd_linf": {"attack": "pgd", "norm": "linf", "params": {"steps": 5}},
            "pgd_l2": {"attack": "pgd", "norm": "l2", "params": {"steps": 5}},
            "pgd_l1": {"attack": "pgd", "norm": "l1", "params": {"steps": 5}},
            "aa_linf": {"attack": "autoattack", "norm": "linf",
                        "params": {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 5}},
        },
        "transfer": {"attacks": ["pgd_linf"], "examples": 20},
        "curves": {"attacks": ["pgd_l2"], "steps": [1, 5], "eps_scale": [0.5, 2.0], "examples": 20},
    }
    raw.update(changes)
    return suite_from_dict(raw)


def run(out, *, workers, suite=None, chaos=None):
    return evaluate(model_path=tiny_model_path(), suite=suite or small_suite(), output=out, dataset="digits",
                    workers=workers, chaos=chaos)


def rows(path):
    return pq.read_table(path).sort_by([("job", "ascending"), ("target", "ascending"),
                                        ("example_id", "ascending")]).to_pylist()


def test_two_ray_workers_give_the_rows_of_one_worker():
    one, two = workdir() / "one-worker", workdir() / "two-workers"
    first = run(one, workers=0)  # one process, shards in sequence
    ray_session()
    second = run(two, workers=2)
    assert first.shards_total == second.shards_total == second.shards_run > 4
    for name in ("results.parquet", "transfer.parquet", "curves.parquet"):
        assert rows(one / name) == rows(two / name)
    assert first.summary == second.summary
    assert len(rows(one / "results.parquet")) == N * 4
    s = first.summary
    for attack, norm in (("pgd_linf", "linf"), ("aa_linf", "linf"), ("pgd_l2", "l2"), ("pgd_l1", "l1")):
        assert s[f"all_{norm}"] <= s["attacks"][attack] < s["clean"]
    assert s["all_attacks"] <= min(s["all_linf"], s["all_l2"], s["all_l1"])


def test_outputs_of_an_evaluation():
    out = workdir() / "one-worker"
    if not (out / "summary.json").is_file():
        run(out, workers=0)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["attacks"]) == {"pgd_linf", "pgd_l2", "pgd_l1", "aa_linf"}
    report = (out / "report.md").read_text()
    assert "| **All attacks** |" in report and "| pgd_l1 (pgd) | 5 |" in report
    assert "from \\ on" in report                                   # the transferability matrix
    transfer = summary["transfer"]["pgd_linf"]
    assert transfer["models"] == ["ensemble", "m0", "m1"]
    assert all(transfer["ratios"][i][i] in (1.0,) or transfer["counts"][i][i] == 0 for i in range(3))
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0] == "curve,attack,norm,x,robust_accuracy,examples" and len(curves) == 1 + 4
    assert (out / "curves.png").stat().st_size > 1000
    radius = [p for p in summary["curves"] if p["curve"] == "radius"]
    assert radius[0]["robust_accuracy"] >= radius[-1]["robust_accuracy"]  # eps 0.5 vs 2.0


def test_a_killed_worker_is_retried_and_every_row_appears_once():
    ray_session()
    out = workdir() / "retry"
    suite = small_suite(transfer={}, curves={})
    victim = plan_shards(plan_jobs(suite, num_members=2, examples=N), suite.shard_size)[5]
    marker = workdir() / "retry-killed"
    result = run(out, workers=2, suite=suite, chaos=Chaos(shard_name=victim.name, marker=str(marker)))
    assert marker.exists()                                   # the worker was killed once
    assert result.shards_run == result.shards_total
    table = pq.read_table(out / "results.parquet")
    keys = list(zip(table.column("example_id").to_pylist(), table.column("attack").to_pylist()))
    assert len(keys) == len(set(keys)) == N * 4


def test_a_run_killed_midway_resumes_without_redoing_finished_shards():
    ray_session()
    out = workdir() / "resume"
    suite = small_suite(transfer={}, curves={}, resources={"num_cpus": 1, "max_retries": 0})
    shards = plan_shards(plan_jobs(suite, num_members=2, examples=N), suite.shard_size)
    victim = shards[2]
    with pytest.raises(ShardsFailed, match="re-run the same command"):
        run(out, workers=2, suite=suite, chaos=Chaos(shard_name=victim.name, marker=str(workdir() / "resume-killed")))
    folder = out / SHARDS_DIR
    finished = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    assert victim.file_name not in finished and len(finished) == len(shards) - 1
    assert not list(folder.glob(".*.tmp"))                    # no half-written file left behind
    result = run(out, workers=2, suite=suite)
    assert result.shards_run == 1
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet") if p.name in finished} == finished
    table = pq.read_table(out / "results.parquet")
    keys = list(zip(table.column("example_id").to_pylist(), table.column("attack").to_pylist()))
    assert len(keys) == len(set(keys)) == N * 4
    # The resumed run holds the rows of a run never interrupted, value for value (same suite, same seed):
    # success, norms and predictions of every example, not only its keys.
    whole = run(workdir() / "resume-uninterrupted", workers=0, suite=suite)
    assert rows(out / "results.parquet") == rows(workdir() / "resume-uninterrupted" / "results.parquet")
    assert result.summary == whole.summary
    # The reported wall time is the cost of both calls that ran shards, not of the last call alone ...
    calls = [json.loads(line) for line in (out / "calls.jsonl").read_text().splitlines()]
    assert [c["shards_finished"] for c in calls] == [len(shards) - 1, 1]
    assert result.wall_time_s == pytest.approx(sum(c["wall_s"] for c in calls))
    assert result.wall_time_s > calls[1]["wall_s"]
    # ... and a third call that only merges finished shards adds nothing and reports the same.
    again = run(out, workers=2, suite=suite)
    assert again.shards_run == 0 and again.wall_time_s == pytest.approx(result.wall_time_s)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["calls"] == 2 and "2 calls (resumed)" in (out / "report.md").read_text()


def test_merge_refuses_a_duplicated_or_missing_example():
    src = workdir() / "one-worker"
    if not (src / "summary.json").is_file():
        run(src, workers=0)
    suite = small_suite()
    shards = plan_shards(plan_jobs(suite, num_members=2, examples=N), suite.shard_size)
    out = workdir() / "dup"
    shutil.copytree(src / SHARDS_DIR, out / SHARDS_DIR)
    a, b = out / SHARDS_DIR / shards[0].file_name, out / SHARDS_DIR / shards[1].file_name
    table = pq.read_table(a)
    pq.write_table(table.set_column(0, "example_id", pq.read_table(b).column("example_id")), a)
    with pytest.raises(RuntimeError, match="appears 2 times"):
        merge_shards(shards, out)
    os.unlink(a)
    with pytest.raises(UserError, match="re-run the same command"):
        merge_shards(shards, out)


def test_an_output_folder_of_another_evaluation_is_refused():
    out = workdir() / "one-worker"
    if not (out / "summary.json").is_file():
        run(out, workers=0)
    with pytest.raises(UserError, match="holds another evaluation \\(suite.seed 3 there, 4 now\\)"):
        run(out, workers=0, suite=small_suite(seed=4))


def test_nhwc_conv_weights_give_the_verdicts_of_contiguous_ones():
    """resources.channels_last changes the memory layout only: every verdict is the same, the perturbation
    norms equal up to summation order."""
    resources = {"num_cpus": 1, "max_retries": 1}
    nchw, nhwc = workdir() / "layout-nchw", workdir() / "layout-nhwc"
    run(nchw, workers=0, suite=small_suite(resources={**resources, "channels_last": False}, transfer={},
                                           curves={}))
    run(nhwc, workers=0, suite=small_suite(resources={**resources, "channels_last": True}, transfer={},
                                           curves={}))
    a, b = rows(nchw / "results.parquet"), rows(nhwc / "results.parquet")
    assert len(a) == len(b) == N * 4
    verdict = ("example_id", "job", "success", "pred_adv", "within_radius", "in_box")
    assert [tuple(r[k] for k in verdict) for r in a] == [tuple(r[k] for k in verdict) for r in b]
    assert [r["perturbation_norm"] for r in b] == pytest.approx([r["perturbation_norm"] for r in a], rel=1e-4,
                                                                 abs=1e-5)


@pytest.mark.parametrize("setting, device, expected", [
    ("auto", "cpu", True), ("auto", "cuda", False), (True, "cuda", True), (False, "cpu", False)])
def test_the_evaluation_layout_follows_the_suite_and_auto_means_cpu(setting, device, expected):
    import torch

    from mat_dist.core.fast_path import evaluation_channels_last
    from mat_dist.evaluate.model_source import parse_source
    from mat_dist.evaluate.shards import models_for

    assert evaluation_channels_last(setting, torch.device(device)) is expected
    models = models_for(parse_source(str(tiny_model_path())), ("ensemble", "m0"), torch.device("cpu"),
                        channels_last=expected)
    convs = [m.weight for m in models["m0"].modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) is expected for w in convs)


def test_a_suite_refuses_a_channels_last_that_is_not_a_switch():
    with pytest.raises(UserError, match="channels_last"):
        small_suite(resources={"num_cpus": 1, "channels_last": "fast"})
