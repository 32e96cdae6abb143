"""Models mat-dist did not train: every SPEC kind, the contract checks, ONNX, the leaderboard, the Python API."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import mat_dist
from evaluate_helpers import digits, ray_session, tiny_model, tiny_model_path, workdir
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.evaluator import evaluate
from mat_dist.evaluate.model_source import parse_source
from mat_dist.evaluate.suite import suite_from_dict
from test_evaluate_cli import matd, one_error_line

SUITE = {"name": "any", "examples": 40, "shard_size": 20, "seed": 0, "eps": {"linf": 0.1, "l2": 1.0, "l1": 5.0},
         "attacks": {"pgd_linf": {"attack": "pgd", "norm": "linf", "params": {"steps": 10}},
                     "pgd_l2": {"attack": "pgd", "norm": "l2", "params": {"steps": 10}},
                     "pgd_l1": {"attack": "pgd", "norm": "l1", "params": {"steps": 10}},
                     "square_linf": {"attack": "autoattack", "norm": "linf",
                                     "params": {"version": "custom", "attacks": ["square"], "square_queries": 100}}}}
FIGURES = ("clean", "attacks", "all_linf", "all_l2", "all_l1", "all_attacks")


def suite(**changes):
    return suite_from_dict({**SUITE, **changes})


def folder(name: str) -> Path:
    path = workdir() / "any-model" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def figures(summary: dict) -> dict:
    return {k: summary[k] for k in FIGURES if k in summary}


FACTORY_MODULE = '''
import torch
from mat_dist.core.checkpoint import load_model

def the_network():
    """The tiny mat-dist network as a plain module (weights come from --weights)."""
    return load_model({path!r})

def fresh():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
'''


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny mat-dist network saved as TorchScript, a torch.export program, a factory file and ONNX."""
    root = tmp_path_factory.mktemp("models")
    net = tiny_model()
    x = digits().test.images[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's note on a Python float: the number of heads, a constant
        torch.jit.save(torch.jit.trace(net, x), root / "net.ts")
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("n")},)), root / "net.pt2")
    (root / "factory.py").write_text(FACTORY_MODULE.format(path=str(tiny_model_path())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x[:1],), str(root / "net.onnx"), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
    return root


def test_every_spec_kind_gives_the_figures_of_the_mat_dist_checkpoint(saved):
    reference = evaluate(model_path=tiny_model_path(), suite=suite(), output=folder("ckpt"), dataset="digits",
                         workers=0).summary
    for name, spec in [("ts", saved / "net.ts"), ("pt2", saved / "net.pt2"),
                       ("factory", f"{saved / 'factory.py'}:the_network")]:
        source = parse_source(str(spec))
        assert source.kind == {"ts": "torchscript", "pt2": "export", "factory": "factory"}[name]
        result = evaluate(model=source, suite=suite(), output=folder(name), dataset="digits", workers=0)
        assert figures(result.summary) == figures(reference), name
        assert json.loads((folder(name) / "summary.json").read_text())["meta"]["model_kind"] == source.kind


def test_factory_weights_from_safetensors_and_from_a_state_dict(tmp_path, saved):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    trained = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    save_file(trained.state_dict(), tmp_path / "w.safetensors")
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    x = digits().test.images[:8]
    for weights in ("w.safetensors", "w.pt"):
        net = parse_source(f"{saved / 'factory.py'}:fresh", weights=tmp_path / weights).load()
        assert torch.equal(net(x), trained(x)), weights


def test_a_foreign_model_on_two_ray_workers_matches_this_process(saved):
    ray_session()
    one = evaluate(model=parse_source(str(saved / "net.ts")), suite=suite(), output=folder("ts-w0"), dataset="digits",
                   workers=0)
    two = evaluate(model=parse_source(str(saved / "net.ts")), suite=suite(), output=folder("ts-w2"), dataset="digits",
                   workers=2)
    assert figures(one.summary) == figures(two.summary)
    a = pq.read_table(folder("ts-w0") / "results.parquet").drop(["shard"]).to_pylist()
    b = pq.read_table(folder("ts-w2") / "results.parquet").drop(["shard"]).to_pylist()
    assert a == b


def test_normalising_wrapper_lets_attacks_work_in_pixels(saved):
    mean, std = 0.3, 0.4

    class ExpectsNormalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_model()

        def forward(self, z):  # z = (x - mean) / std
            return self.inner(z * std + mean)

    x = digits().test.images[:16]
    wrapped = parse_source(ExpectsNormalised(), input_mean=[mean], input_std=[std]).load()
    assert torch.allclose(wrapped(x), tiny_model()(x), atol=1e-5)


# ------------------------------------------------------------------ the contract

class Shape(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 5) + x.mean()


class Softmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x):
        return self.inner(x).softmax(dim=1)


class Random(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x):
        return self.inner(x) + torch.randn(len(x), 10)


class NaN(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10] * float("nan")


class BatchDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x):
        return self.inner(x) - self.inner(x).mean(dim=0, keepdim=True)


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x):
        return self.inner(x.detach().clone()).detach()


@pytest.mark.parametrize("module,expected", [
    (Shape(), "returns shape (16, 5)"),
    (Softmax(), "returns probabilities"),
    (Random(), "changes its answer on the same input"),
    (NaN(), "NaN or infinite"),
    (BatchDependent(), "depends on the other images of the batch"),
    (Detached(), "input gradient"),
])
def test_each_contract_violation_is_one_line_and_writes_nothing(tmp_path, module, expected):
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        evaluate(model=parse_source(module), suite=suite(), output=out, dataset="digits", workers=0)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_a_file_that_is_not_a_model_is_one_line_from_the_command_line(monkeypatch, capsys, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all" * 10)
    out = tmp_path / "out"
    code, _, err = matd(monkeypatch, capsys, "evaluate", "--model", junk, "--data", "digits", "-w", "0",
                        "--no-tracking", "-o", out)
    assert "is not a TorchScript file" in one_error_line(code, err)
    bad_onnx = tmp_path / "junk.onnx"
    bad_onnx.write_bytes(b"\x00\x01garbage")
    code, _, err = matd(monkeypatch, capsys, "evaluate", "--model", bad_onnx, "--data", "digits", "-w", "0",
                        "--no-tracking", "-o", out)
    assert "not a readable ONNX model" in one_error_line(code, err)
    code, _, err = matd(monkeypatch, capsys, "evaluate", "--model", "no_such_module:make", "--data", "digits",
                        "-w", "0", "--no-tracking", "-o", out)
    assert "cannot import module no_such_module" in one_error_line(code, err)
    assert not out.exists()


# ------------------------------------------------------------------ ONNX: gradient-free attacks only

def test_onnx_runs_only_gradient_free_attacks_and_they_break_a_weak_model(saved):
    out = folder("onnx")
    big = suite(eps={"linf": 0.3, "l2": 2.0, "l1": 10.0},
                attacks={**SUITE["attacks"], "square_linf": {
                    "attack": "autoattack", "norm": "linf",
                    "params": {"version": "custom", "attacks": ["square"], "square_queries": 300}}})
    result = evaluate(model=parse_source(str(saved / "net.onnx")), suite=big, output=out, dataset="digits", workers=0)
    attacks = set(pq.read_table(out / "results.parquet").column("attack").to_pylist())
    assert attacks == {"square_linf"}
    assert result.summary["attacks"]["square_linf"] < result.summary["clean"] - 0.3  # the clean model breaks
    report = (out / "report.md").read_text()
    assert "White-box attacks were not possible" in report and "pgd_linf" in report


def test_onnx_with_only_white_box_attacks_is_refused(saved, tmp_path):
    white = suite(attacks={k: v for k, v in SUITE["attacks"].items() if k.startswith("pgd")})
    with pytest.raises(UserError, match="only white-box attacks"):
        evaluate(model=parse_source(str(saved / "net.onnx")), suite=white, output=tmp_path / "o", dataset="digits",
                 workers=0)


# ------------------------------------------------------------------ several models: the leaderboard

def test_the_leaderboard_ranks_two_models_of_known_order(monkeypatch, capsys, tmp_path, saved):
    (tmp_path / "const.py").write_text(
        "import torch\n\nclass Constant(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.zeros(1))\n\n    def forward(self, x):\n"
        "        out = torch.zeros(len(x), 10) + self.w * x.flatten(1).sum(1, keepdim=True)\n"
        "        out[:, 3] += 5.0  # always class 3: clean accuracy 10%, robust 10% at most\n        return out\n\n"
        "def make():\n    return Constant()\n")
    suite_file = tmp_path / "suite.yaml"
    small_radii = {**SUITE, "eps": {"linf": 0.02, "l2": 0.2, "l1": 1.0}}  # the trained model keeps most images
    suite_file.write_text(json.dumps(small_radii))
    out = tmp_path / "board"
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--model", f"good={saved / 'net.ts'}", "--model", "const:make", "--data", "digits",
            "--suite", suite_file, "-w", "0", "--no-tracking", "-o", out]
    code, stdout, err = matd(monkeypatch, capsys, *args)
    assert code in (0, None), err
    board = pq.read_table(out / "leaderboard.parquet").to_pylist()
    assert [row["model"] for row in board] == ["good", "make"] and [row["rank"] for row in board] == [1, 2]
    assert board[0]["all_attacks_lo"] > board[1]["all_attacks_hi"]  # separated: not a tie
    text = (out / "leaderboard.md").read_text()
    assert text.index("| 1 | good |") < text.index("| 2 | make |")
    assert "2. make: " in stdout and ", vs above -" in stdout  # the paired difference to the model above
    assert (out / "good" / "report.md").is_file() and (out / "make" / "report.md").is_file()
    # a model already evaluated is not attacked again
    code, stdout, _ = matd(monkeypatch, capsys, *args)
    assert stdout.count("0 shards run, ") == 2


def test_the_python_api_returns_the_command_lines_summary(saved):
    images, labels = digits().test.images[:40], digits().test.labels[:40]
    summary = mat_dist.evaluate_model(tiny_model(), data=(images, labels), suite=str(_suite_file()), workers=0)
    reference = evaluate(model_path=tiny_model_path(), suite=suite(), output=folder("api-ref"), dataset="digits",
                         workers=0).summary
    assert figures(summary) == figures(reference)
    assert summary["intervals"]["all_attacks"][0] <= summary["all_attacks"] <= summary["intervals"]["all_attacks"][1]
    import importlib
    import types

    package = importlib.import_module("mat_dist.evaluate")
    assert type(package) is types.ModuleType and not callable(package)  # a plain package: no class swapped in


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_python_api_refuses_images_that_are_not_finite(tmp_path, bad):
    images, labels = digits().test.images[:40].clone(), digits().test.labels[:40]
    # One pixel of one image past the 16 the contract runs the model on: NaN passes a [0, 1] range check, since
    # it compares false to both bounds, and would reach the attacks.
    images[30, 0, 3, 3] = bad
    with pytest.raises(UserError, match=r"data images must be finite: 1 of 40 hold NaN or infinite") as err:
        mat_dist.evaluate_model(tiny_model(), data=(images, labels), suite=str(_suite_file()), workers=0,
                          output=tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


@pytest.mark.parametrize("bad", [10, 12, -1])
def test_the_python_api_refuses_labels_outside_the_models_classes(tmp_path, bad):
    """The model scores 10 classes: a label of 10 or more (or below 0) is refused, not read as an 11th class."""
    images, labels = digits().test.images[:40], digits().test.labels[:40].clone()
    labels[5] = bad
    with pytest.raises(UserError, match=rf"data labels must be class indices 0\.\.9, the 10 classes the model "
                                        rf"scores; 1 of 40 are not \(the first: {bad}\)") as err:
        mat_dist.evaluate_model(tiny_model(), data=(images, labels), suite=str(_suite_file()), workers=0,
                          output=tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_classes_of_images_given_as_tensors_come_from_the_model(tmp_path):
    """A 12-class model is evaluated on labels 0..11: its output width, not the data sets' 10, sets K."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 12)).eval()
    images = digits().test.images[:8]
    labels = torch.tensor([0, 11, 3, 10, 5, 2, 9, 1])
    tiny = {**SUITE, "examples": 8, "shard_size": 8,
            "attacks": {"pgd_linf": {"attack": "pgd", "norm": "linf", "params": {"steps": 1}}}}
    (tmp_path / "suite.yaml").write_text(json.dumps(tiny))
    summary = mat_dist.evaluate_model(net, data=(images, labels), suite=str(tmp_path / "suite.yaml"), workers=0)
    assert 0.0 <= summary["all_attacks"] <= summary["clean"] <= 1.0
    with pytest.raises(UserError, match=r"class indices 0\.\.11, the 12 classes .* \(the first: 12\)"):
        mat_dist.evaluate_model(net, data=(images, labels + 1), suite=str(tmp_path / "suite.yaml"), workers=0)


def _suite_file() -> Path:
    path = folder("suite.yaml")
    path.write_text(json.dumps(SUITE))
    return path


def test_shipped_field_and_blackbox_suites():
    from mat_dist.evaluate.suite import load_suite

    cifar = load_suite("field-cifar10")
    assert {n.value: e for n, e in cifar.eps.items()} == pytest.approx({"linf": 8 / 255, "l2": 0.5, "l1": 12.0})
    full = [a for a in cifar.attacks if a.attack == "autoattack"]
    assert {a.norm.value for a in full} == {"linf", "l2", "l1"}
    assert all(a.params["n_iter"] == 100 and a.params["n_target_classes"] == 9 for a in full)
    blackbox = load_suite("blackbox")
    assert not any(a.needs_gradients for a in blackbox.attacks)
    assert {a.norm.value for a in blackbox.attacks} == {"linf", "l2", "l1"}
    for name in ("field", "field-cifar10", "blackbox"):
        assert f"--suite {name}" in open(load_suite(name).source).read()
