"""`matd` as a user runs it: one clear line and exit 2 for mistakes, a working train command."""

import json
import subprocess
import sys

import pytest
import yaml


def matd(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mat_dist.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=None)


def _assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("matd: error:") and fragment in lines[0], lines[0]


@pytest.fixture
def repo_cwd(tmp_path, monkeypatch):
    import os
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path


CASES = [
    ("malformed yaml", "data: [1, 2\n", [], "malformed YAML"),
    ("unknown key", "dat: {}\n", [], "unknown config key 'dat'"),
    ("negative radius", None, ["attack.eps=[1.0,-0.1]"], "must be positive"),
    ("norm list length", None, ["attack.norms=[l2]", "attack.eps=[1.0]", "attack.alpha=[0.5]"],
     "attack.norms has 1 entries"),
    ("linf 0-255", None, ["attack.eps=[1.0,8]"], "l_inf radius 8.0 is above 1"),
    ("batch too big", None, ["data.batch_size=100000"], "batch"),
    ("missing data folder", None, ["data.name=mnist", "data.root=/no/such/folder"], "/no/such/folder"),
]


@pytest.mark.parametrize("case, text, overrides, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(repo_cwd, tiny_raw, case, text, overrides, fragment):
    path = repo_cwd / "cfg.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(tiny_raw))
    proc = matd("train", "--config", str(path), "--output", str(repo_cwd / "out"), *overrides, cwd=repo_cwd)
    _assert_one_line_error(proc, fragment)
    assert not (repo_cwd / "out" / "model.safetensors").exists()


def test_unreachable_tracking_server_is_one_line(repo_cwd, tiny_raw):
    tiny_raw["tracking"] = {"enabled": True}
    path = repo_cwd / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    proc = matd("train", "--config", str(path), "--output", str(repo_cwd / "out"),
                "--tracking-uri", "http://127.0.0.1:9", cwd=repo_cwd)
    _assert_one_line_error(proc, "http://127.0.0.1:9 is unreachable")


def test_train_then_resume_from_the_command_line(repo_cwd, tiny_raw):
    path = repo_cwd / "cfg.yaml"
    tiny_raw["train"]["epochs"] = 1
    path.write_text(yaml.safe_dump(tiny_raw))
    out = repo_cwd / "out"
    # in this process (--cluster none): resuming on Ray is test_distributed's; this is the command line's part
    proc = matd("train", "--config", str(path), "--output", str(out), "--cluster", "none", cwd=repo_cwd)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    proc = matd("train", "--output", str(out), "--resume", "--cluster", "none", "train.epochs=2", cwd=repo_cwd)
    _assert_one_line_error(proc, "config differs")
    proc = matd("train", "--output", str(out), "--resume", "--cluster", "none", cwd=repo_cwd)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_commands(repo_cwd):
    proc = matd("--help", cwd=repo_cwd)
    assert proc.returncode == 0 and "train" in proc.stdout
