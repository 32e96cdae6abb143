"""One schema for the five kinds of YAML (run config, cluster file, suite, search space, models file), one
override syntax, and ``matd validate``. The bad-input tables of each kind live beside it (test_config, test_clusters,
test_evaluate_cli, test_tune_space, test_reliability_inputs) and go through the same schema."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from mat_dist import file_kinds
from mat_dist.core.run_config import SHIPPED_CONFIGS, RunConfig, apply_run_overrides, config_from_dict, load_config
from mat_dist.cluster.files import SHIPPED_CLUSTERS, ClusterConfig, load_cluster
from mat_dist.plumbing.errors import UserError
from mat_dist.evaluate.models_file import ModelsFile, load_models_file
from mat_dist.evaluate.suite import SHIPPED_SUITES, SuiteFile, load_suite
from mat_dist.file_kinds import FileKind, detect_kind, validate_file
from mat_dist.tune.space import SHIPPED_SPACES, SpaceFile, load_space, trial_config

# A models file names the user's own models: none ships.
SHIPPED = {FileKind.RUN: SHIPPED_CONFIGS, FileKind.CLUSTER: SHIPPED_CLUSTERS, FileKind.SUITE: SHIPPED_SUITES,
           FileKind.SPACE: SHIPPED_SPACES}
FILES = [(kind, path) for kind, folder in SHIPPED.items() for path in sorted(folder.glob("*.yaml"))]
LOADERS = {FileKind.RUN: load_config, FileKind.CLUSTER: load_cluster, FileKind.SUITE: load_suite,
           FileKind.SPACE: load_space, FileKind.MODELS: load_models_file}


def matd(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from mat_dist.cli.main import main

    monkeypatch.setattr(sys, "argv", ["matd", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ---------------------------------------------------------------- the five models

@pytest.mark.parametrize("kind", list(FileKind), ids=lambda k: k.value)
def test_every_kind_is_a_pydantic_model_that_forbids_unknown_keys(kind: FileKind) -> None:
    model = file_kinds.model_of(kind)
    config = getattr(model, "__pydantic_config__", None) or model.model_config
    assert config["extra"] == "forbid"
    assert {RunConfig: FileKind.RUN, ClusterConfig: FileKind.CLUSTER, SuiteFile: FileKind.SUITE,
            SpaceFile: FileKind.SPACE, ModelsFile: FileKind.MODELS}[model] is kind


def test_every_kind_but_the_models_file_ships_files() -> None:
    assert {kind for kind, _ in FILES} == set(FileKind) - {FileKind.MODELS} == set(SHIPPED)


@pytest.mark.parametrize("kind,path", FILES, ids=[f"{k.value}-{p.stem}" for k, p in FILES])
def test_every_shipped_yaml_validates_and_its_kind_is_detected(kind: FileKind, path: Path) -> None:
    assert detect_kind(path) is kind
    line = validate_file(str(path))
    assert line.startswith(f"{path}: valid {file_kinds.KIND_WORDS[kind]} (")


@pytest.mark.parametrize("kind", list(SHIPPED), ids=lambda k: k.value)
def test_matd_validate_checks_every_shipped_file(monkeypatch, capsys, kind: FileKind) -> None:
    for path in sorted(SHIPPED[kind].glob("*.yaml")):
        code, out, err = matd(monkeypatch, capsys, "validate", path)
        assert code == 0 and not err.strip(), err
        assert out.strip().startswith(f"{path}: valid {file_kinds.KIND_WORDS[kind]}"), out


def test_matd_validate_with_kind_takes_a_shipped_name(monkeypatch, capsys) -> None:
    code, out, _ = matd(monkeypatch, capsys, "validate", "--kind", "cluster", "local")
    assert code == 0 and out.startswith("local: valid cluster file (a local Ray runtime: 1 worker")


# ---------------------------------------------------------------- one override syntax, list indices included

def test_train_override_with_an_index_sets_sub_model_0s_radius() -> None:
    from mat_dist.cli.train_cmd import resolve_run_config  # what `matd train` builds its config with

    base = load_config("mnist5k-mat")
    cfg, _ = resolve_run_config("mnist5k-mat", None, False, ["attack.eps.0=5"])
    assert cfg.attack.eps == [5.0, *base.attack.eps[1:]] and cfg.attack.norms == base.attack.norms
    assert cfg.attack.norms[0].value == "l1"  # sub-model 0's threat model is l_1: 5 is an l_1 radius


def test_an_index_into_a_list_the_file_leaves_out_starts_from_the_default(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text("name: short\ntrain: {epochs: 1}\n")
    cfg = load_config(path, ["attack.eps.0=5", "attack.alpha.2=0.02"])
    default = RunConfig().attack
    assert cfg.attack.eps == [5.0, *default.eps[1:]]
    assert cfg.attack.alpha == [*default.alpha[:2], 0.02]


def test_the_search_space_sets_its_keys_with_the_same_function(tiny_raw: dict) -> None:
    by_override = config_from_dict(apply_run_overrides(yaml.safe_load(yaml.safe_dump(tiny_raw)), ["attack.eps.0=0.5"]))
    by_trial = trial_config(tiny_raw, {"attack.eps.0": 0.5})
    assert by_override.attack == by_trial.attack and by_trial.attack.eps == [0.5, 0.1]
    for set_it in (lambda: apply_run_overrides(dict(tiny_raw), ["attack.eps.5=1"]),
                   lambda: trial_config(tiny_raw, {"attack.eps.5": 1.0})):
        with pytest.raises(UserError, match="attack.eps.5 indexes element 5 but attack.eps has 2 elements"):
            set_it()


@pytest.mark.parametrize("override,fragment", [
    ("attack.eps.3=1", "override 'attack.eps.3=1': attack.eps.3 indexes element 3 but attack.eps has 3 elements"),
    ("optim.lr.0=1", "optim.lr is a single value; it has no part '0'"),
    ("attack.eps.first=1", "attack.eps is a list; index it with a number (attack.eps.0, attack.eps.1, ...)"),
    ("method.loss_weights.0=2", "method.loss_weights is not set; give the whole list (method.loss_weights=[...])"),
    ("atack.eps.0=1", "unknown config key 'atack.eps.0'; known keys here: name, seed, data"),
    ("train.epochs", "not of the form key.sub=value"),
])
def test_a_bad_index_or_key_in_an_override_is_one_line(override: str, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        load_config("mnist5k-mat", [override])
    assert fragment in one_line(str(err.value)), err.value


def test_a_wrong_value_set_by_an_override_names_the_override() -> None:
    with pytest.raises(UserError) as err:
        load_config("mnist5k-mat", ["train.epochs=three"])
    assert str(err.value).startswith("override 'train.epochs=three': config key train.epochs: expected an integer")


def test_suite_overrides_index_lists_too() -> None:
    suite = load_suite("quick", ["curves.steps.0=3", "attacks.pgd_linf.params.steps=7"])
    assert suite.curves.steps[0] == 3 and suite.attack("pgd_linf").params["steps"] == 7


def test_matd_train_refuses_an_out_of_range_index_before_anything_runs(monkeypatch, capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, _, err = matd(monkeypatch, capsys, "train", "--config", "mnist5k-mat", "--cluster", "none", "--output", out,
                        "attack.eps.7=5")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "indexes element 7 but attack.eps has 3 elements" in lines[0], err
    assert not out.exists()


# ---------------------------------------------------------------- empty files

EMPTY = {"empty": "", "comments": "# Run: matd ...\n\n# nothing set yet\n"}


@pytest.mark.parametrize("kind", list(FileKind), ids=lambda k: k.value)
@pytest.mark.parametrize("name", list(EMPTY))
def test_an_empty_or_comment_only_file_is_refused_with_one_line(tmp_path: Path, kind: FileKind, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(EMPTY[name])
    with pytest.raises(UserError) as err:
        LOADERS[kind](path)
    message = one_line(str(err.value))
    assert str(path) in message and "is empty" in message, message
    if kind in SHIPPED:  # start from a shipped one
        assert "shipped" in message, message
    else:
        assert "models: [{name, model, weights, input_mean, input_std}]" in message, message


@pytest.mark.parametrize("name", list(EMPTY))
def test_matd_train_with_an_empty_config_does_not_start_a_run(monkeypatch, capsys, tmp_path: Path,
                                                              name: str) -> None:
    path, out = tmp_path / "empty.yaml", tmp_path / "run"
    path.write_text(EMPTY[name])
    code, _, err = matd(monkeypatch, capsys, "train", "--config", path, "--cluster", "none", "--output", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"matd: error: {path} is empty"), err
    assert not out.exists()


def test_matd_tune_with_an_empty_space_is_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(EMPTY["comments"])
    code, _, err = matd(monkeypatch, capsys, "tune", "--space", path, "--output", tmp_path / "sweep")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "is empty" in lines[0], err


@pytest.mark.parametrize("kind", [None, *FileKind], ids=lambda k: k.value if k else "detected")
def test_matd_validate_refuses_an_empty_file_and_exits_2(monkeypatch, capsys, tmp_path: Path, kind) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(EMPTY["comments"])
    args = ["validate", path] + (["--kind", kind.value] if kind else [])
    code, out, err = matd(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and not out and len(lines) == 1 and lines[0].startswith("matd: error: "), err
    assert f"{path} is empty" in lines[0]


def test_a_section_left_empty_takes_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("name: x\ntracking:\n  # enabled: false\n")
    assert load_config(path).tracking == RunConfig().tracking


# ---------------------------------------------------------------- detecting the kind

@pytest.mark.parametrize("text,kind", [
    ("params: {optim.lr: {uniform: [0.001, 0.01]}}\n", FileKind.SPACE),
    ("eps: {linf: 0.1}\nattacks: {a: {attack: pgd, norm: linf}}\n", FileKind.SUITE),
    ("workers: {num: 2}\n", FileKind.CLUSTER),
    ("cluster_name: x\nprovider: {type: aws}\nmat_dist: {address: auto, workers: {cpus: 1}}\n", FileKind.CLUSTER),
    ("kind: RayJob\n---\nkind: ConfigMap\n", FileKind.CLUSTER),
    ("data: {name: digits}\ntrain: {epochs: 1}\n", FileKind.RUN),
    ("name: x\nseed: 0\nmodel: {num_members: 1}\nmethod: {name: at}\n", FileKind.RUN),
    ("models: [{name: a, model: net.ts}]\n", FileKind.MODELS),
])
def test_validate_detects_the_kind_from_the_top_level_keys(tmp_path: Path, text: str, kind: FileKind) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(text)
    assert detect_kind(path) is kind


@pytest.mark.parametrize("text,fragment", [
    ("seed: 3\n", "could be a run config, a suite or a search space (keys seed); give --kind"),
    ("colour: blue\n", "belong to no kind of file; give --kind"),
    ("- 1\n", "must be a YAML mapping"),
])
def test_validate_asks_for_the_kind_when_it_cannot_tell(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        detect_kind(path)
    assert fragment in one_line(str(err.value)) and str(path) in str(err.value)


def test_matd_validate_prints_the_error_line_and_exits_2_as_every_mistake(monkeypatch, capsys, tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("data: {name: digits, batch_size: 0}\n")
    code, out, err = matd(monkeypatch, capsys, "validate", path)
    assert code == 2 and not out
    assert err.strip() == f"matd: error: {path}: data.batch_size=0 must be at least 1"


# ---------------------------------------------------------------- unknown keys name the key and the file

UNKNOWN = [
    (FileKind.RUN, "data: {name: digits}\ntrian: {epochs: 1}\n", "unknown config key 'trian'"),
    (FileKind.RUN, "data: {name: digits, batch: 3}\n", "unknown config key 'data.batch'"),
    (FileKind.CLUSTER, "workers: {num: 1}\nadress: auto\n", "unknown key adress"),
    (FileKind.CLUSTER, "workers: {nmu: 1}\n", "unknown key workers.nmu"),
    (FileKind.SUITE, "eps: {linf: 0.1}\nattacks: {a: {attack: pgd, norm: linf}}\nshards: 3\n", "unknown key 'shards'"),
    (FileKind.SUITE, "eps: {linf: 0.1}\nattacks: {a: {attack: pgd, norm: linf, radius: 1}}\n",
     "unknown key 'attacks.a.radius'"),
    (FileKind.SPACE, "params: {optim.lr: {uniform: [0.001, 0.01]}}\ntrails: 3\n", "unknown key 'trails'"),
    (FileKind.SPACE, "params: {optim.lr: {uniform: [0.001, 0.01]}}\nscheduler: {nmae: asha}\n",
     "unknown key 'scheduler.nmae'"),
    (FileKind.MODELS, "models: [{model: net.ts}]\nboard: x\n", "unknown key 'board'"),
    (FileKind.MODELS, "models: [{model: net.ts, wieghts: w.pt}]\n",
     "unknown key 'models.0.wieghts'; known keys here: model, name, weights, input_mean, input_std; "
     "did you mean models.0.weights?"),
]


@pytest.mark.parametrize("kind,text,fragment", UNKNOWN, ids=[f"{k.value}-{f}" for k, _, f in UNKNOWN])
def test_an_unknown_key_error_names_the_key_and_the_file(tmp_path: Path, kind: FileKind, text: str,
                                                         fragment: str) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        LOADERS[kind](path)
    message = one_line(str(err.value))
    assert fragment in message and str(path) in message and "known keys here" in message, message
    with pytest.raises(UserError) as again:  # matd validate goes through the same loader
        validate_file(str(path))
    assert str(again.value) == message


# ---------------------------------------------------------------- the models file of matd evaluate

FACTORY = "import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n"


def _models_file(folder: Path, entries: str) -> Path:
    (folder / "nets").mkdir(exist_ok=True)
    (folder / "nets" / "factory.py").write_text(FACTORY)
    import torch
    from safetensors.torch import save_file

    save_file(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).state_dict(), folder / "nets" / "w.safetensors")
    path = folder / "nets" / "models.yaml"
    path.write_text(entries)
    return path


def test_a_models_file_validates_and_names_each_model(monkeypatch, capsys, tmp_path: Path) -> None:
    path = _models_file(tmp_path, "models:\n  - {name: plain, model: factory.py:make}\n"
                                  "  - {name: normalised, model: factory.py:make, weights: w.safetensors,\n"
                                  "     input_mean: [0.1307], input_std: [0.3081]}\n")
    monkeypatch.chdir(tmp_path)  # the files in it are relative to the models file, not to here
    code, out, err = matd(monkeypatch, capsys, "validate", path)
    assert code == 0 and not err.strip(), err
    assert out.strip() == f"{path}: valid models file (2 models: plain (Python factory), normalised (Python factory))"
    plain, normalised = load_models_file(path)
    assert plain.weights is None and plain.input_mean is None
    assert normalised.weights == str((tmp_path / "nets" / "w.safetensors").resolve())
    assert normalised.input_mean == (0.1307,) and normalised.input_std == (0.3081,)


@pytest.mark.parametrize("entry,fragment", [
    ("{model: factory.py:make, input_std: [0.3]}", "models.0: give both input_mean and input_std"),
    ("{model: factory.py:make, input_mean: [0.1, 0.2], input_std: [0.3]}",
     "models.0: input_mean has 2 values and input_std 1; give one per channel"),
    ("{model: factory.py:make, input_mean: [0.1], input_std: [0]}", "models.0.input_std.0=0 must be positive"),
    ("{model: factory.py:make, input_mean: 0.1, input_std: [0.3]}", "models.0.input_mean must be a list, got 0.1"),
    ("{model: factory.py:make, name: ../up}", "models.0.name '../up' must start with a letter or digit"),
    ("{name: a}", "models.0.model is missing; add it"),
    ("{model: factory.py:make, weights: missing.pt}", "models.0: --weights"),
    ("{model: no_such.py:make}", "models.0: --model no_such.py:make: no_such.py does not exist"),
])
def test_a_bad_models_file_is_one_line_naming_the_file_and_the_key(monkeypatch, capsys, tmp_path: Path,
                                                                   entry: str, fragment: str) -> None:
    path = _models_file(tmp_path, f"models:\n  - {entry}\n")
    code, out, err = matd(monkeypatch, capsys, "validate", path)
    lines = err.strip().splitlines()
    assert code == 2 and not out and len(lines) == 1 and lines[0].startswith(f"matd: error: {path}: "), err
    assert fragment in lines[0], lines[0]
