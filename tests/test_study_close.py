"""The study's second stage (``matd reproduce --preset tiny-study --close``): the close set from the finished first
stage, more seeds on more images into evals-<N> without touching the first stage's evaluations, a re-run that skips
everything, and a report that uses the second stage for the close methods."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mat_dist.plumbing.errors import UserError
from mat_dist.reproduce.close import close_members, close_set, reproduce_close
from mat_dist.reproduce.pipeline import evaluation_fingerprint, preset_suite, reproduce, run_configs
from mat_dist.reproduce.presets import PRESETS

PRESET = PRESETS["tiny-study"]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the close set, from finished rows

def _finished_row(out: Path, name: str, union: float, fingerprint: dict) -> None:
    """What a finished first-stage row leaves on disk, as far as the close set reads it."""
    (out / "runs" / name).mkdir(parents=True)
    (out / "runs" / name / "metrics.jsonl").write_text('{"epoch": 2}\n')
    (out / "evals" / name).mkdir(parents=True)
    (out / "evals" / name / "summary.json").write_text(json.dumps({"all_attacks": union, "clean": 0.9}))
    (out / "evals" / name / "eval.json").write_text(json.dumps({**fingerprint, "model_sha256": "x"}))


def _first_stage_fingerprint(tmp_path) -> dict:
    suite = preset_suite(PRESET)
    configs = run_configs(PRESET, [(PRESET.methods[0], 0)], output=tmp_path, overrides=[], tracking=True)
    return json.loads(json.dumps(evaluation_fingerprint(configs, suite, suite.examples)))


def test_the_close_set_is_the_methods_within_the_margin_and_the_reference(tmp_path):
    fingerprint = _first_stage_fingerprint(tmp_path)
    unions = {"at_linf": 0.80, "ft_mat_rotate": 0.75, "mat_rotate": 0.05, "e_at": 0.70, "avg": 0.699}
    for name, union in unions.items():
        _finished_row(tmp_path, name, union, fingerprint)
    found = close_set(replace(PRESET, close_margin=10.0), tmp_path)
    # at_linf is the best; e_at 10 points below is inside (100 * (0.8 - 0.7) is 10.000000000000009 in floating
    # point), avg 10.1 below outside; mat_rotate always
    assert found.members == ("at_linf", "ft_mat_rotate", "mat_rotate", "e_at")
    assert found.unions == unions and found.best == "at_linf" and found.examples == 40
    assert found.describe().endswith("; outside: avg 69.9")
    assert close_members({"a": 0.5, "mat_rotate": 0.1, "b": 0.25}, 24.9) == ("a", "mat_rotate")
    assert close_members({"a": 0.5, "b": 0.25}, 25.0) == ("a", "b")  # exactly at the margin: inside


def test_a_first_stage_row_of_other_images_does_not_count(tmp_path):
    fingerprint = _first_stage_fingerprint(tmp_path)
    for name in ("at_linf", "ft_mat_rotate", "mat_rotate", "e_at"):
        _finished_row(tmp_path, name, 0.2, fingerprint)
    _finished_row(tmp_path, "avg", 0.2, {**fingerprint, "examples": 30})
    with pytest.raises(UserError, match=r"first seed trained and evaluated in .*; not yet: avg \(run matd"):
        close_set(PRESET, tmp_path)


def test_a_provisional_close_set_is_drawn_from_the_finished_rows(tmp_path):
    fingerprint = _first_stage_fingerprint(tmp_path)
    for name, union in (("at_linf", 0.30), ("mat_rotate", 0.10), ("avg", 0.25)):
        _finished_row(tmp_path, name, union, fingerprint)
    found = close_set(replace(PRESET, close_margin=10.0), tmp_path, provisional=True)
    assert found.members == ("at_linf", "mat_rotate", "avg") and found.unfinished == ("ft_mat_rotate", "e_at")
    assert found.unions == {"at_linf": 0.30, "mat_rotate": 0.10, "avg": 0.25}
    assert found.describe().endswith("; provisional, not finished yet: ft_mat_rotate, e_at")
    assert found.to_dict()["unfinished"] == ["ft_mat_rotate", "e_at"]
    with pytest.raises(UserError, match="not yet: ft_mat_rotate, e_at"):  # without the flag, as before
        close_set(PRESET, tmp_path)
    shutil.rmtree(tmp_path / "evals" / "mat_rotate")  # every paired difference is against it: not without it
    with pytest.raises(UserError, match="--close --provisional needs mat_rotate's first seed trained and evaluated"):
        close_set(PRESET, tmp_path, provisional=True)


def test_close_before_every_first_stage_row_is_one_clear_line(tmp_path):
    fingerprint = _first_stage_fingerprint(tmp_path)
    for name in ("at_linf", "mat_rotate", "avg"):
        _finished_row(tmp_path, name, 0.2, fingerprint)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "mat_dist.cli.main", "reproduce", "--preset", "tiny-study",
                           "--output", str(tmp_path), "--close", "--no-tracking"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("matd: error: --close needs every method's first seed") \
        and lines[0].endswith("not yet: ft_mat_rotate, e_at (run matd reproduce --preset tiny-study --output "
                              f"{tmp_path} first, or give --provisional)"), lines[0]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("flags, line", [
    (["--close", "--seeds", "3"], "--close --seeds 3: the second stage of tiny-study has seeds 0..1; give 1 to 2 "
                                  "(fewer runs the first ones now, the rest later)"),
    (["--provisional"], "--provisional draws a provisional close set: it goes with --close")])
def test_second_stage_flags_out_of_place_are_one_clear_line(tmp_path, flags, line):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "mat_dist.cli.main", "reproduce", "--preset", "tiny-study",
                           "--output", str(tmp_path / "study"), *flags, "--no-tracking"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == f"matd: error: {line}"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_preset_without_a_second_stage_refuses_close(tmp_path):
    with pytest.raises(UserError, match="preset tiny has no second stage"):
        close_set(PRESETS["tiny"], tmp_path)
    study = PRESETS["mnist5k-study"]
    assert (study.close_margin, study.close_examples, study.close_seeds) == (10.0, 1000, 3)


def test_the_committed_study_folder_still_matches_the_preset_with_its_second_stage(tmp_path):
    """The close_* fields change no first-stage run: a preset.json written before they existed (the committed one
    without them) still matches, so a continued study re-trains and re-evaluates none of its committed rows."""
    from mat_dist.reproduce.pipeline import PRESET_FILE, _check_preset_file

    study = PRESETS["mnist5k-study"]
    committed = json.loads((REPO / "reports" / "mnist5k-study" / PRESET_FILE).read_text())
    for key in ("close_margin", "close_examples", "close_seeds"):  # as written before they existed (the
        committed["preset"].pop(key, None)                          # second stage has rewritten it since)
    for preset in (study, replace(study, close_margin=5.0, close_seeds=5)):
        folder = tmp_path / str(preset.close_margin)
        folder.mkdir()
        (folder / PRESET_FILE).write_text(json.dumps(committed))
        _check_preset_file(folder, preset, [], partial=True)  # accepted
    refused = tmp_path / "refused"
    refused.mkdir()
    (refused / PRESET_FILE).write_text(json.dumps(committed))
    with pytest.raises(UserError, match="with other settings"):  # what does change the runs still counts
        _check_preset_file(refused, replace(study, examples=1000), [], partial=True)


# ---------------------------------------------------------------- end to end on tiny data

def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def second_stage(tmp_path_factory):
    """The first stage of tiny-study, then its second stage for two close methods (one fine-tuned)."""
    out = tmp_path_factory.mktemp("close") / "study"
    reproduce(PRESET, output=out, tracking=False, workers=0)
    first_evals = _snapshot(out / "evals")
    preset = replace(PRESET, close_margin=100.0)  # every method close, whatever two epochs make of them
    result = reproduce_close(preset, output=out, tracking=False, workers=0, only=["ft_mat_rotate", "mat_rotate"])
    return out, preset, first_evals, result


def test_the_second_stage_trains_the_seeds_and_evaluates_them_on_more_images(second_stage):
    out, preset, first_evals, result = second_stage
    assert sorted(o.label for o in result.methods) == ["ft_mat_rotate", "ft_mat_rotate-seed1", "mat_rotate",
                                                       "mat_rotate-seed1"]
    status = {o.label: (o.training, o.evaluation) for o in result.methods}
    assert status["mat_rotate"] == ("skipped", "evaluated") and status["mat_rotate-seed1"] == ("trained",
                                                                                              "evaluated")
    for label in ("mat_rotate-seed1", "ft_mat_rotate-seed1", "at_linf-seed1"):  # the source's seed too
        assert (out / "runs" / label / "model.safetensors").is_file(), label
    cfg = (out / "runs" / "ft_mat_rotate-seed1" / "config.yaml").read_text()
    assert f"init_from: {out / 'runs' / 'at_linf-seed1'}" in cfg and "seed: 1" in cfg
    assert sorted(p.name for p in (out / "evals-60").iterdir()) == ["ft_mat_rotate", "ft_mat_rotate-seed1",
                                                                   "mat_rotate", "mat_rotate-seed1"]
    for label in ("mat_rotate", "ft_mat_rotate-seed1"):
        assert json.loads((out / "evals-60" / label / "summary.json").read_text())["examples"] == 60
    assert _snapshot(out / "evals") == first_evals  # the first stage's evaluations untouched, none added
    recorded = json.loads((out / "close.json").read_text())
    assert recorded["margin"] == 100.0 and recorded["members"] == [m.name for m in PRESET.methods]


def test_a_second_run_of_the_second_stage_skips_everything(second_stage):
    out, preset, _, _ = second_stage
    runs_before, evals_before = _snapshot(out / "runs"), _snapshot(out / "evals-60")
    again = reproduce_close(preset, output=out, tracking=False, workers=0, only=["ft_mat_rotate", "mat_rotate"])
    assert {(o.training, o.evaluation) for o in again.methods} == {("skipped", "skipped")}
    assert _snapshot(out / "runs") == runs_before and _snapshot(out / "evals-60") == evals_before


def test_only_a_method_outside_the_close_set_is_refused(second_stage):
    out, preset, _, _ = second_stage
    narrow = replace(preset, close_margin=-1.0)  # nothing within: the reference alone
    with pytest.raises(UserError, match=r"--close --only avg: not in the close set \(mat_rotate\)"):
        reproduce_close(narrow, output=out, tracking=False, workers=0, only=["avg"])


def test_a_trained_run_without_its_weights_is_refused_before_anything_trains(second_stage, tmp_path):
    out, preset, _, _ = second_stage
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "runs" / "avg" / "model.safetensors").unlink()  # as in a fresh clone of committed results
    with pytest.raises(UserError, match=r"runs/avg is trained but has no weights \(model.safetensors\)"):
        reproduce_close(preset, output=copy, tracking=False, workers=0, only=["avg"])
    assert not (copy / "runs" / "avg-seed1").exists() and not (copy / "evals-60" / "avg").exists()


def test_the_first_seeds_alone_evaluate_the_first_stage_weights_and_train_nothing(second_stage, tmp_path):
    """``--close --seeds 1``: seed 0's weights are the first stage's, on the machine that trained it only, so
    the second stage can evaluate them first and leave the new seeds (work any machine can do) for later."""
    out, preset, _, _ = second_stage
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first = reproduce_close(preset, output=copy, tracking=False, workers=0, only=["avg"], seeds=1)
    assert [(o.label, o.training, o.evaluation) for o in first.methods] == [("avg", "skipped", "evaluated")]
    assert not (copy / "runs" / "avg-seed1").exists() and (copy / "evals-60" / "avg" / "results.parquet").is_file()
    rows = {r["name"]: r for r in json.loads((copy / "study.json").read_text())["rows"]}
    assert (rows["avg"]["images"], rows["avg"]["seeds"], rows["avg"]["close"]) == (60, [0], True)
    rest = reproduce_close(preset, output=copy, tracking=False, workers=0, only=["avg"])  # the rest, later
    assert {o.label: (o.training, o.evaluation) for o in rest.methods} == {
        "avg": ("skipped", "skipped"), "avg-seed1": ("trained", "evaluated")}
    for wrong in (0, 3):
        with pytest.raises(UserError, match=rf"--close --seeds {wrong}: the second stage of tiny-study has seeds "
                                            r"0\.\.1; give 1 to 2"):
            reproduce_close(preset, output=copy, tracking=False, workers=0, only=["avg"], seeds=wrong)


def test_a_provisional_second_stage_evaluates_seed_0_before_the_last_rows_finish(second_stage, tmp_path):
    out, preset, _, _ = second_stage
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "evals" / "e_at")  # as if e_at were still training
    (copy / "close.json").unlink()
    with pytest.raises(UserError, match=r"not yet: e_at \(run matd reproduce .* or give --provisional\)"):
        reproduce_close(preset, output=copy, tracking=False, workers=0, only=["avg"], seeds=1)
    done = reproduce_close(preset, output=copy, tracking=False, workers=0, only=["avg"], seeds=1, provisional=True)
    assert [(o.label, o.training, o.evaluation) for o in done.methods] == [("avg", "skipped", "evaluated")]
    assert json.loads((copy / "close.json").read_text())["unfinished"] == ["e_at"]
    assert "A provisional set (`--provisional`), drawn before the first seed of e_at was finished." \
        in (copy / "study.md").read_text()


def test_the_report_uses_the_second_stage_for_the_close_methods(second_stage):
    out, _, _, _ = second_stage
    study = json.loads((out / "study.json").read_text())
    rows = {r["name"]: r for r in study["rows"]}
    assert (rows["mat_rotate"]["images"], rows["mat_rotate"]["seeds"], rows["mat_rotate"]["close"]) == (60, [0, 1],
                                                                                                         True)
    assert (rows["ft_mat_rotate"]["images"], rows["ft_mat_rotate"]["seeds"]) == (60, [0, 1])
    assert (rows["e_at"]["images"], rows["e_at"]["seeds"], rows["e_at"]["close"]) == (40, [0], False)
    union = [json.loads((out / "evals-60" / label / "summary.json").read_text())["all_attacks"]
             for label in ("mat_rotate", "mat_rotate-seed1")]
    assert rows["mat_rotate"]["union"] == pytest.approx(sum(union) / 2)
    assert rows["mat_rotate"]["union_per_seed"] == pytest.approx(union)  # seed 0, then seed 1
    assert rows["e_at"]["union_per_seed"] == [rows["e_at"]["union"]]
    # paired on the images both have, every seed of each: two close methods on 60 images x 2 seeds; a first-stage
    # one (1 seed) against a close one (2 seeds) on the first stage's 40 images
    assert (rows["ft_mat_rotate"]["paired_vs_reference"]["images"],
            rows["ft_mat_rotate"]["paired_vs_reference"]["seeds"]) == (60, [2, 2])
    assert (rows["e_at"]["paired_vs_reference"]["images"], rows["e_at"]["paired_vs_reference"]["seeds"]) == (40, [1, 2])
    claims = {c["claim"]: c for c in study["claims"]}
    close_claim = claims["MAT fine-tuned from l_inf-AT reaches MAT (rotated) from scratch"]
    assert (close_claim["images"], close_claim["seeds"]) == (60, [2, 2])
    assert study["close_set"]["margin"] == 100.0
    text = (out / "study.md").read_text()
    assert "| mat_rotate | 0-1 |" in text and "| e_at | 0 |" in text
    assert ("Evaluated on 60 test images x 2 seeds: ft_mat_rotate, mat_rotate; on 40 test images x 1 seed: "
            "at_linf, e_at, avg. The close set (second stage, `--close`): the methods whose first-seed union on 40 "
            "images is within 100 points of the best") in text
    assert "and mat_rotate always: at_linf, ft_mat_rotate, mat_rotate, e_at, avg." in text
    # The seed-to-seed section lists the rows of several seeds only, each seed's union on the same images.
    section = text.split("## Seed to seed")[1].split("##")[0]
    assert f"| mat_rotate | 0-1 | {100 * union[0]:.1f} / {100 * union[1]:.1f} | {100 * abs(union[0] - union[1]):.1f} |" \
        in section
    assert "| e_at |" not in section and "| ft_mat_rotate | 0-1 |" in section


def test_close_list_prints_the_close_set_one_method_a_line(second_stage):
    out, _, _, _ = second_stage
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = _snapshot(out)
    proc = subprocess.run([sys.executable, "-m", "mat_dist.cli.main", "reproduce", "--preset", "tiny-study",
                           "--output", str(out), "--close", "--list", "--no-tracking"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    found = close_set(PRESET, out, tracking=False)  # the preset's own margin (5 points)
    assert proc.stdout.split() == list(found.members) and "mat_rotate" in found.members
    assert proc.stderr.strip() == found.describe()
    assert _snapshot(out) == before  # a dry run: nothing written


def test_the_first_stage_run_again_after_the_second_redoes_nothing(second_stage):
    """Review check: matd reproduce without --close (one seed) after the second stage trains and evaluates
    nothing, leaves runs/, evals/ and evals-60/ as they are, and the close set (from evals/, seed 0) is the same."""
    out, preset, first_evals, _ = second_stage
    before = {d: _snapshot(out / d) for d in ("runs", "evals", "evals-60")}
    close_before = close_set(preset, out, tracking=False)
    again = reproduce(PRESET, output=out, tracking=False, workers=0)
    assert {(o.training, o.evaluation) for o in again.methods} == {("skipped", "skipped")}
    assert sorted(o.label for o in again.methods) == sorted(m.name for m in PRESET.methods)  # seed 0 only
    assert {d: _snapshot(out / d) for d in before} == before and before["evals"] == first_evals
    assert close_set(preset, out, tracking=False) == close_before
    rows = {r["name"]: r for r in json.loads((out / "study.json").read_text())["rows"]}
    assert (rows["mat_rotate"]["images"], rows["mat_rotate"]["seeds"]) == (60, [0, 1])


# ---------------------------------------------------------------- run.sh CLOSE=1 (matd and python stubbed)

def test_run_sh_close_runs_every_method_of_the_close_set(tmp_path):
    """``--close --list`` prints the set one method a line; without METHODS, run.sh must run each of them (the
    newlines of the list are no spaces: a ``case " $SET "`` match on them skipped every method and exited 0)."""
    here = tmp_path / "reports" / "mnist5k-study"
    here.mkdir(parents=True)
    shutil.copy(REPO / "reports" / "mnist5k-study" / "run.sh", here / "run.sh")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls.txt"
    (stubs / "matd").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'case " $* " in *" --list "*) echo "close set of mnist5k-study: ..." >&2; '
        "printf 'mat\\nmat_rotate\\nmsd\\n' ;; esac\n"
        'case " $* " in *" --only mat_rotate "*) [ -z "$REFUSE" ] || { echo "matd: error: not in the close set"; '
        "exit 2; } ;; esac\n")
    (stubs / "python").write_text("#!/usr/bin/env bash\necho\n")  # the preset's method names: unused by CLOSE=1
    for stub in ("matd", "python"):
        (stubs / stub).chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(f'export PATH="{stubs}:$PATH"\n')

    def run(**env):
        calls.write_text("")
        proc = subprocess.run(["bash", str(here / "run.sh")], check=True, timeout=60, capture_output=True, text=True,
                              env={**{k: v for k, v in os.environ.items()
                                   if k not in ("METHODS", "SEEDS", "CLOSE_SEEDS", "PROVISIONAL", "REFUSE")},
                                   "CLOSE": "1", **env})
        run.stderr = proc.stderr
        return [line.split("--only ")[1] for line in calls.read_text().splitlines() if "--only" in line]

    assert run() == ["mat", "mat_rotate", "msd"]
    assert run(METHODS="msd mat") == ["mat", "msd"]
    assert "--seeds" not in calls.read_text()
    assert run(CLOSE_SEEDS="1") == ["mat --seeds 1", "mat_rotate --seeds 1", "msd --seeds 1"]
    assert "--provisional" not in calls.read_text()
    assert run(CLOSE_SEEDS="1", PROVISIONAL="1") == ["mat --seeds 1 --provisional", "mat_rotate --seeds 1 "
                                                     "--provisional", "msd --seeds 1 --provisional"]
    assert "--close --list --provisional" in calls.read_text()  # the set itself drawn provisionally too
    # a method the set lost meanwhile (a provisional set, drawn again per call) is logged; the others still run
    assert run(REFUSE="1") == ["mat", "mat_rotate", "msd"]
    assert "mat_rotate (second stage) failed: matd: error: not in the close set" in run.stderr


def test_run_sh_close_publishes_the_second_stage(tmp_path):
    """CLOSE=1 with a publish clone: the seeds' runs, evals-<N> and close.json are committed there."""
    here = tmp_path / "reports" / "mnist5k-study"
    here.mkdir(parents=True)
    shutil.copy(REPO / "reports" / "mnist5k-study" / "run.sh", here / "run.sh")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "matd").write_text("#!/usr/bin/env bash\n"
                                'case " $* " in *" --list "*) echo set >&2; echo mat ;; esac\n')
    (stubs / "python").write_text("#!/usr/bin/env bash\necho\n")
    for stub in ("matd", "python"):
        (stubs / stub).chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(f'export PATH="{stubs}:$PATH"\n')
    (here / "close.json").write_text("{}")
    files = ["runs/mat/metrics.jsonl", "runs/mat-seed1/metrics.jsonl", "runs/mat-seed2/config.yaml",
             "evals/mat/summary.json", "evals-1000/mat/results.parquet", "evals-1000/mat-seed2/eval.json"]
    for f in files:
        (here / f).parent.mkdir(parents=True, exist_ok=True)
        (here / f).write_text("x")
    publish = tmp_path / "publish"
    subprocess.run(["git", "init", "-q", str(publish)], check=True)
    env = {**{k: v for k, v in os.environ.items() if k not in ("METHODS", "SEEDS", "CLOSE_SEEDS", "PROVISIONAL")},
           "CLOSE": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["bash", str(here / "run.sh"), str(publish)], check=True, timeout=60, env=env)
    committed = subprocess.run(["git", "-C", str(publish), "ls-files"], check=True, capture_output=True,
                               text=True).stdout.split()
    assert sorted(committed) == sorted(f"reports/mnist5k-study/{f}" for f in [*files, "close.json"])
