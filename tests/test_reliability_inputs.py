"""Bad inputs through the real ``matd`` command: one table, every row one line on stderr and nothing half-written.

Each row builds its inputs in its own folder and runs ``matd ...`` in its own process, as a
user would (cwd = that folder, PYTHONPATH = the repository): tests/cli_forker.py imports
the CLI once and forks one process per row, so the rows do not each pay torch's import. Asserted for
every row: a non-zero exit code, exactly one stderr line starting with
``matd: error:`` that holds the row's fragment (the problem, and where sensible
the fix), no "Traceback", and no model or temporary file left in the output
folder. The processes run four at a time; all but the "unreachable" rows fail before any
Ray runtime or MLflow server is started.

RELIABILITY.md lists the rows with their observed outcome.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # builds inputs in the folder, returns the matd arguments
    fragment: str                       # must appear in the one stderr line
    fix: str | None = None              # a second fragment: the fix the line suggests


# ---------------------------------------------------------------- input builders

def _cfg(folder: Path, **sections) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(*overrides: str, cluster: str = "none", text: str | None = None, extra: tuple[str, ...] = ()):
    def setup(folder: Path) -> list[str]:
        if text is not None:
            (folder / "cfg.yaml").write_text(text)
        else:
            _cfg(folder)
        return ["train", "--config", str(folder / "cfg.yaml"), "--output", str(folder / "out"),
                "--cluster", cluster, *extra, *overrides]
    return setup


def _cluster_file(body: str, *overrides: str):
    def setup(folder: Path) -> list[str]:
        _cfg(folder)
        (folder / "cluster.yaml").write_text(body)
        return ["train", "--config", str(folder / "cfg.yaml"), "--output", str(folder / "out"),
                "--cluster", str(folder / "cluster.yaml"), *overrides]
    return setup


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _mnist_folder(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    root = folder / "mnist"
    root.mkdir()
    for prefix, n in (("train", 40), ("t10k", 10)):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x803))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, n, dtype=np.uint8), 0x801))
    return root


def _mnist_train(damage: Callable[[Path], None]):
    def setup(folder: Path) -> list[str]:
        root = _mnist_folder(folder)
        damage(root)
        return _train("data.name=mnist", f"data.root={root}", "data.val_size=10")(folder)
    return setup


def _truncate_images(root: Path) -> None:
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])


def _bad_magic(root: Path) -> None:
    path = root / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x02" + path.read_bytes()[4:])


def _bad_gzip(root: Path) -> None:
    path = root / "train-labels-idx1-ubyte"
    data = gzip.compress(path.read_bytes())
    path.unlink()
    (root / "train-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2])


def _cifar_train(damage: str):
    def setup(folder: Path) -> list[str]:
        root = folder / "cifar"
        root.mkdir()
        rng = np.random.default_rng(1)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                     b"labels": [int(v) for v in rng.integers(0, 10, 4)]}
            (root / name).write_bytes(pickle.dumps(batch, protocol=4))
        victim = root / "data_batch_3"
        if damage == "truncated":
            victim.write_bytes(victim.read_bytes()[:500])
        else:  # not a pickle at all
            victim.write_bytes(b"this is not a CIFAR-10 batch\n" * 10)
        return _train("data.name=cifar10", f"data.root={root}", "data.val_size=4", "data.batch_size=4")(folder)
    return setup


def _unwritable_output(folder: Path) -> list[str]:
    # Tests may run as root, which writes into a chmod 0o500 folder anyway: a path under a regular FILE
    # cannot be created by anyone.
    _cfg(folder)
    (folder / "a_file").write_text("not a folder\n")
    return ["train", "--config", str(folder / "cfg.yaml"), "--output", str(folder / "a_file" / "sub"),
            "--cluster", "none"]


def _resume_other_m(folder: Path) -> list[str]:
    """A run folder whose checkpoint holds a model of another M than the run's config (a stale checkpoint)."""
    import torch

    from mat_dist.core.checkpoint import save_checkpoint
    from mat_dist.core.run_config import config_from_dict, config_to_yaml
    from mat_dist.data import load_splits
    from mat_dist.core.models import build_model
    from mat_dist.core.trainer import model_spec

    out = folder / "out"
    out.mkdir()
    cfg = config_from_dict(yaml.safe_load(yaml.safe_dump(TINY)))
    (out / "config.yaml").write_text(config_to_yaml(cfg))
    spec = model_spec(cfg, load_splits("digits", val_size=100, limit_train=320))
    other = build_model(type(spec)(**{**spec.__dict__, "num_members": 3}))
    save_checkpoint(out / "checkpoints", net=other, state={"epoch": 1, "step": 10, "rng": torch.get_rng_state()},
                    keep=2)
    return ["train", "--output", str(out), "--resume", "--cluster", "none"]


def _model_file(folder: Path, *, image_size: int = 8, truncate: bool = False) -> Path:
    from mat_dist.core.checkpoint import save_weights
    from mat_dist.core.models import ModelSpec, build_model

    spec = ModelSpec(backbone="mnist_cnn", num_members=2, in_channels=1, image_size=(image_size, image_size),
                     num_classes=10, mean=(0.5,), std=(0.25,))
    path = folder / "model.safetensors"
    save_weights(build_model(spec), path)
    if truncate:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _evaluate(*extra: str, suite: str | None = None, image_size: int = 8, truncate: bool = False,
              tracking: bool = False):
    def setup(folder: Path) -> list[str]:
        model = _model_file(folder, image_size=image_size, truncate=truncate)
        args = ["evaluate", "--checkpoint", str(model), "--data", "digits", "-n", "8", "--workers", "0",
                "--output", str(folder / "out")]
        if suite is not None:
            (folder / "suite.yaml").write_text(suite)
            args += ["--suite", str(folder / "suite.yaml")]
        if not tracking:
            args.append("--no-tracking")
        return args + list(extra)
    return setup


def _tune(space: str, *extra: str):
    def setup(folder: Path) -> list[str]:
        _cfg(folder)
        (folder / "space.yaml").write_text(space)
        return ["tune", "--space", str(folder / "space.yaml"), "--config", str(folder / "cfg.yaml"),
                "--output", str(folder / "out"), *extra]
    return setup


_SPACE_OK = "params:\n  attack.alpha.0: {loguniform: [0.01, 0.5]}\n"

CASES = [
    # ---- train: the config file and overrides
    Case("train malformed yaml", _train(text="data: [1, 2\n"), "malformed YAML at line"),
    Case("train unknown key", _train(text="dat: {}\n"), "unknown config key 'dat'", "known keys here"),
    Case("train wrong type", _train("train.epochs=three"), "train.epochs: expected an integer"),
    Case("train zero radius", _train("attack.eps=[0,0.1]"), "radius 0.0 must be positive"),
    Case("train negative radius", _train("attack.eps=[1.0,-0.1]"), "radius -0.1 must be positive"),
    Case("train negative eval radius", _train("eval.eps.l1=-3"), "eval.eps.l1: l1 radius -3.0 must be positive"),
    Case("train unknown norm", _train("attack.norms=[l2,l3]"), "'l3' is not one of"),
    Case("train unknown method", _train("method.name=fgsm_at"), "method.name 'fgsm_at' is unknown", "use one of"),
    Case("train norm list of the wrong length", _train("attack.norms=[l2]"), "need the same length"),
    Case("train linf radius in 0-255 units", _train("attack.eps=[1.0,8]"), "l_inf radius 8.0 is above 1",
         "write 0.0314"),
    Case("train bad override syntax", _train("train.epochs"), "not of the form key.sub=value"),
    Case("train missing config", _train(extra=("--config", "no-such-config")), "neither a file nor a shipped"),
    # ---- train: data
    Case("train missing data folder", _train("data.name=mnist", "data.root=/no/such/folder"),
         "/no/such/folder does not exist"),
    Case("train truncated IDX", _mnist_train(_truncate_images), "train-images-idx3-ubyte"),
    Case("train corrupt IDX magic", _mnist_train(_bad_magic), "magic number"),
    Case("train truncated gzip IDX", _mnist_train(_bad_gzip), "train-labels-idx1-ubyte.gz"),
    Case("train truncated CIFAR batch", _cifar_train("truncated"), "data_batch_3"),
    Case("train corrupt CIFAR batch", _cifar_train("garbage"), "data_batch_3"),
    # ---- train: output folder, resume, tracking
    Case("train unwritable output folder", _unwritable_output, "is not writable", "choose another --output"),
    Case("train resume with a checkpoint of another M", _resume_other_m, "M=3",
         "start a new output folder"),
    Case("train resume without a run", _train(extra=("--resume",)), "holds no run"),
    Case("train unreachable tracking server",
         _train("tracking.enabled=true", extra=("--tracking-uri", "http://127.0.0.1:9")),
         "http://127.0.0.1:9 is unreachable", "--tracking-uri sqlite:///mlflow.db"),
    Case("train tracking URI credentials not echoed",
         _train("tracking.enabled=true", extra=("--tracking-uri", "http://alice:s3cr3t-t0ken@127.0.0.1:9")),
         "http://***@127.0.0.1:9 is unreachable"),
    # ---- cluster files
    Case("cluster malformed yaml", _cluster_file("workers: {num: 2\n"), "is not valid YAML", "fix the syntax"),
    Case("cluster unknown key", _cluster_file("worker: {num: 2}\n"), "unknown key worker"),
    Case("cluster wrong type", _cluster_file("workers: {num: two}\n"), "workers.num must be an integer"),
    Case("cluster zero cpus", _cluster_file("workers: {num: 1, cpus: 0}\n"), "workers.cpus=0 must be positive"),
    Case("cluster batch not divisible", _cluster_file("workers: {num: 3, cpus: 1}\n", "data.batch_size=64"),
         "data.batch_size=64 does not divide across 3 workers", "multiple of 3"),
    Case("cluster unreachable address", _cluster_file("address: 127.0.0.1:1\nworkers: {num: 1, cpus: 1}\n"),
         "Ray cluster at 127.0.0.1:1 is unreachable", "ray start --head"),
    Case("cluster missing file", _train(cluster="no-such-cluster.yaml"), "does not exist", "'none'"),
    # ---- evaluate
    Case("evaluate truncated checkpoint", _evaluate(truncate=True), "is damaged", "whole checkpoint"),
    Case("evaluate checkpoint of another architecture", _evaluate(image_size=28),
         "the model takes 1x28x28 images but digits has 1x8x8", "--data"),
    Case("evaluate missing checkpoint", lambda f: ["evaluate", "--checkpoint", str(f / "nope.safetensors"),
                                                   "--data", "digits", "--workers", "0"], "does not exist"),
    Case("evaluate missing data folder", _evaluate("--data", "mnist", "--data-root", "/no/such/mnist"),
         "/no/such/mnist does not exist"),
    Case("evaluate unknown attack", _evaluate(suite="eps: {linf: 0.1}\nattacks: {a: {attack: deepfool, norm: l2}}\n"),
         "unknown attack 'deepfool'"),
    Case("evaluate unknown norm", _evaluate(suite="eps: {linf: 0.1}\nattacks: {a: {attack: pgd, norm: l3}}\n"),
         "unknown norm 'l3'"),
    Case("evaluate suite linf radius in 0-255 units",
         _evaluate(suite="eps: {linf: 8}\nattacks: {a: {attack: pgd, norm: linf}}\n"), "above 1"),
    Case("evaluate bad suite override", _evaluate("eps.linf=-0.1"), "must be a positive number"),
    Case("evaluate unwritable output folder",
         lambda f: _evaluate()(f)[:-3] + ["--output", str(_file(f) / "sub"), "--no-tracking"], "is not writable"),
    Case("evaluate unreachable tracking server", _evaluate("--tracking-uri", "http://127.0.0.1:9", tracking=True),
         "http://127.0.0.1:9 is unreachable"),
    # ---- tune
    Case("tune malformed space", _tune("params: {attack.alpha.0: {uniform: [0.1\n"), "YAML"),
    Case("tune unknown distribution", _tune("params:\n  attack.alpha.0: {gaussian: [0, 1]}\n"),
         "unknown distribution 'gaussian'", "use one of"),
    Case("tune unknown config key", _tune("params:\n  attack.alfa.0: {uniform: [0.1, 0.5]}\n"), "attack.alfa"),
    Case("tune empty range", _tune("params:\n  attack.alpha.0: {uniform: [0.5, 0.1]}\n"), "empty range"),
    Case("tune zero radius in a space", _tune("params:\n  attack.eps.1: {choice: [0.0, 0.1]}\n"), "must be positive"),
    Case("tune bad base override", _tune(_SPACE_OK, "attack.eps=[1.0,8]"), "above 1"),
    Case("tune resume without output", lambda f: ["tune", "--resume"], "--resume needs --output"),
    # ---- a newcomer's first hour (issue 24): each was found by trying mat-dist as a new user
    Case("evaluate zero examples", _evaluate("-n", "0"), "--examples 0 must be at least 1"),
    Case("evaluate negative examples", _evaluate("-n", "-5"), "--examples -5 must be at least 1"),
    Case("evaluate examples not a number", _evaluate("-n", "abc"), "invalid value for '--examples'",
         "see `matd evaluate -h`"),
    Case("evaluate rerun with another example count", lambda f: _other_examples(f), "examples 16 there, 8 now",
         "rerun with -n 16"),
    Case("evaluate a run that has no model yet", lambda f: _run_without_model(f), "this run has no model yet",
         "--resume"),
    Case("evaluate a folder that is no run", lambda f: ["evaluate", "--run", str(f), "--no-tracking"],
         "is not a training run folder"),
    Case("evaluate a text file as the model", lambda f: _text_model(f), "is not a TorchScript file",
         "it is a text file starting 'hello, I am a model'"),
    Case("evaluate unreachable bare cluster address", _evaluate("--cluster", "127.0.0.1:9"),
         "Ray cluster at 127.0.0.1:9 is unreachable"),
    Case("evaluate arrays without a file", _evaluate("--data", "arrays"), "data.name=arrays needs data.root"),
    Case("train resume an empty folder without a config", lambda f: ["train", "--resume", "--output", str(f / "out")],
         "holds no run", "drop --resume and give --config FILE"),
    Case("train unreachable bare cluster address", _train(cluster="127.0.0.1:9"),
         "Ray cluster at 127.0.0.1:9 is unreachable"),
    Case("train mnist without a data folder", _train("data.name=mnist"), "set data.root"),
    Case("train arrays from a text file", lambda f: _text_arrays(f), "is not a .npz file"),
    Case("train typo in a config key", _train("train.epoch=3"), "unknown config key 'train.epoch'",
         "did you mean train.epochs?"),
    Case("train radii in another order than the norms", _train("attack.norms=[l1,l2,linf]", "attack.eps=[0.3,2,10]",
                                                               "attack.alpha=[0.5,0.1,0.01]", "model.num_members=3"),
         "l_inf radius 10.0 is above 1", "the radii follow attack.norms (l1, l2, linf)"),
    Case("train flag given a value", _train(extra=("--resume", "true")), "a flag takes no value"),
    Case("train unknown option", _train(extra=("--epochs", "3")), "no such option: --epochs", "see `matd train -h`"),
    Case("unknown command", lambda f: ["evalute", "--run", str(f)], "no such command 'evalute'"),
    Case("validate a data folder that is not there",
         lambda f: ["validate", str(_cfg(f, data={"name": "mnist", "root": "/no/such/mnist"}))],
         "/no/such/mnist does not exist"),
    Case("validate a bad value", lambda f: ["validate", str(_cfg(f, data={"batch_size": 0}))],
         "data.batch_size=0 must be at least 1"),
    Case("tune in-process", _tune(_SPACE_OK, "--cluster", "none"), "--cluster none: a sweep runs its trials on Ray"),
    Case("tune zero trials", _tune(_SPACE_OK, "--trials", "0"), "--trials 0 must be at least 1"),
    Case("bench unknown part", lambda f: ["bench", "--parts", "method"], "unknown part method"),
]


def _text_model(folder: Path) -> list[str]:
    (folder / "net.pt").write_text("hello, I am a model\n")
    return ["evaluate", "--model", str(folder / "net.pt"), "--data", "digits", "-n", "8", "--workers", "0",
            "--output", str(folder / "out"), "--no-tracking"]


def _text_arrays(folder: Path) -> list[str]:
    (folder / "mine.npz").write_text("x,y\n0.1,3\n")
    return _train("data.name=arrays", f"data.root={folder / 'mine.npz'}")(folder)


def _run_without_model(folder: Path) -> list[str]:
    """A run folder whose training has written config.yaml and nothing else yet."""
    run = folder / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(TINY))
    return ["evaluate", "--run", str(run), "--workers", "0", "--no-tracking"]


def _other_examples(folder: Path) -> list[str]:
    """An output folder holding the same evaluation on 16 images; the command asks for 8."""
    from mat_dist.evaluate.model_source import parse_source
    from mat_dist.evaluate.suite import load_suite

    args = _evaluate()(folder)
    out = folder / "out"
    out.mkdir()
    fingerprint = {**parse_source(folder / "model.safetensors").fingerprint(), "dataset": "digits", "examples": 16,
                   "suite": load_suite("quick").to_dict()}
    (out / "eval.json").write_text(json.dumps(fingerprint))
    return args


def _file(folder: Path) -> Path:
    path = folder / "a_file"
    path.write_text("not a folder\n")
    return path


_PYTHONPATH = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")


def _env(folder: Path) -> dict[str, str]:
    return {"PYTHONPATH": _PYTHONPATH, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "COLUMNS": "200"}


def _run_all(prepared: dict[str, tuple[Path, list[str]]], logs: Path) -> dict[str, subprocess.CompletedProcess]:
    """Every row's command line in its own process (tests/cli_forker.py forks one per row after importing the
    CLI once), with the row's folder as cwd; the outcome of each as a CompletedProcess."""
    names = list(prepared)
    jobs = [{"cwd": str(prepared[n][0]), "args": prepared[n][1], "env": _env(prepared[n][0]),
             "stdout": str(logs / f"{i}.out"), "stderr": str(logs / f"{i}.err")} for i, n in enumerate(names)]
    env = {**os.environ, "PYTHONPATH": _PYTHONPATH}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_forker.py")], input=json.dumps(jobs),
                          capture_output=True, text=True, timeout=600, env=env, cwd=logs)
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout)
    return {n: subprocess.CompletedProcess(["matd", *prepared[n][1]], codes[i],
                                           (logs / f"{i}.out").read_text(), (logs / f"{i}.err").read_text())
            for i, n in enumerate(names)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every row's inputs built, then all rows run, four processes at a time."""
    prepared, before = {}, {}
    for case in CASES:
        folder = tmp_path_factory.mktemp("bad-input")
        prepared[case.name] = (folder, case.setup(folder))
        before[case.name] = _listing(folder)
    ran = _run_all(prepared, tmp_path_factory.mktemp("bad-input-logs"))
    results = {name: (prepared[name][0], ran[name], before[name]) for name in prepared}
    if os.environ.get("MATD_RELIABILITY_DUMP"):  # the observed lines, for RELIABILITY.md's table
        Path(os.environ["MATD_RELIABILITY_DUMP"]).write_text(json.dumps(
            {name: {"exit": proc.returncode, "stderr": proc.stderr.strip(), "args": proc.args[1:],
                    "left_on_disk": sorted(_listing(folder) - listed)}
             for name, (folder, proc, listed) in results.items()},
            indent=1))
    return results


def _listing(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


_LEFTOVERS = ("model.safetensors", "report.md", "results.parquet", "summary.json")


def _half_written(folder: Path) -> list[str]:
    """A final model or report in ``folder``; temporary files (mkstemp's ``.name.XXXX``, ``.tmp-*``) under it."""
    found = [name for name in _LEFTOVERS if (folder / name).exists()]
    for path in folder.rglob("*"):
        name = path.name
        if name.startswith((".tmp-", ".write-test-", ".mat-dist-write-test-")) or (
                name.startswith(".") and name.count(".") >= 2):
            found.append(str(path.relative_to(folder)))
    return found


# The rows that fail only once the work has begun: a checkpoint's M is known when it is loaded, after the
# first line. Every other row is refused before anything is printed or written.
_PRINTS_FIRST = {"train resume with a checkpoint of another M"}
_WRITES_FIRST: set[str] = set()


def test_the_table_is_wide_enough():
    commands = {c.setup.__qualname__.split(".")[0] for c in CASES}
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)
    assert {"_train", "_evaluate", "_tune", "_cluster_file"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_line_and_leaves_nothing_half_written(outcomes, case: Case):
    folder, proc, listed = outcomes[case.name]
    assert proc.returncode == 2, proc.stdout + proc.stderr  # one exit code for every mistake
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("matd: error: ") and case.fragment in line, line
    if case.fix:
        assert case.fix in line, line
    assert "s3cr3t" not in proc.stderr + proc.stdout
    out = folder / "out"
    assert not out.exists() or not _half_written(out), _half_written(out)
    # Checks before side effects: nothing printed before the error, nothing made on disk.
    assert proc.stdout == "" or case.name in _PRINTS_FIRST, proc.stdout
    assert _listing(folder) == listed or case.name in _WRITES_FIRST, sorted(_listing(folder) - listed)
    if case.name.startswith("train") and case.name != "train resume with a checkpoint of another M":
        # A refused run leaves no run behind: the corrected command works without --resume or a new folder.
        assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()
