"""Search-space files: every shipped space validates; a bad space gets one clear line; values land in the config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mat_dist.core.run_config import config_from_dict
from mat_dist.plumbing.errors import UserError
from mat_dist.tune.space import SHIPPED_SPACES, Dist, load_space, space_from_dict, space_to_dict, trial_config
from mat_dist.tune.sweep import base_config

ROOT = Path(__file__).resolve().parents[1]


def _space(params: dict, **top) -> dict:
    return {"params": params, **top}


@pytest.mark.parametrize("path", sorted(SHIPPED_SPACES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_validates_against_its_base(path: Path) -> None:
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# ") and lines[1].startswith("# Run: matd tune --space tune_spaces/" + path.name)
    space = load_space(path)
    base_raw = space.base_raw(base_config(space, None))
    space.check_against(base_raw)  # every choice and both ends of every range make a valid config
    keys = set(space.keys)
    # the issue's minimum: step size and radius per sub-model, the loss weights, K, the learning rate;
    # a PBT space searches what a run config schedules per epoch (radii, step sizes, loss weights)
    pbt = space.scheduler.name.value == "pbt"
    wanted = ["attack.eps.0", "attack.eps.1", "attack.eps.2", "attack.alpha.0", "attack.alpha.1", "attack.alpha.2",
              "method.loss_weights"] + ([] if pbt else ["attack.steps", "optim.lr"])
    for key in wanted:
        assert key in keys, f"{path.name} does not search {key}"
    assert space.scheduler.name.value in ("asha", "pbt")
    assert space_from_dict(space_to_dict(space), source=space.source) == space
    # at the paper's radii the objective is APGD's: PGD would select for what it cannot break (issue 13)
    from mat_dist.reproduce.presets import PAPER_RADII
    from mat_dist.core.epoch_check import ValidationAttack

    cfg = config_from_dict(base_raw)
    if dict(cfg.eval.eps) in PAPER_RADII.values():
        assert cfg.eval.attack is ValidationAttack.APGD, f"{path.name} selects on {cfg.eval.attack.value}"


def test_the_shipped_names_are_the_issue_s() -> None:
    assert {p.stem for p in SHIPPED_SPACES.glob("*.yaml")} >= {"mnist5k-cpu", "mnist5k-paper", "mnist-paper",
                                                              "cifar10-paper"}


BAD = [
    ("unknown key", _space({"attack.epsilon": {"uniform": [1, 2]}}), "unknown config key 'attack.epsilon'"),
    ("unknown section", _space({"atack.eps": {"uniform": [1, 2]}}), "unknown config key 'atack.eps'"),
    ("empty range", _space({"optim.lr": {"uniform": [0.01, 0.001]}}), "empty range"),
    ("equal bounds", _space({"attack.eps.0": {"uniform": [2.0, 2.0]}}), "empty range"),
    ("negative radius", _space({"attack.eps.1": {"uniform": [-0.5, 1.0]}}), "must be positive"),
    ("zero step size", _space({"attack.alpha": {"choice": [[0.5, 0.0]]}}), "must be positive"),
    ("zero lr", _space({"optim.lr": {"uniform": [0, 0.01]}}), "must be positive"),
    ("loguniform at 0", _space({"attack.warmup": {"loguniform": [0.0, 0.5]}}), "positive low bound"),
    ("negative weight", _space({"method.loss_weights.0": {"uniform": [-1, 1]}}), "must be >= 0"),
    ("eval searched", _space({"eval.eps.linf": {"uniform": [0.01, 0.1]}}), "cannot be searched"),
    ("eval section", _space({"eval.steps": {"choice": [5, 10]}}), "cannot be searched"),
    ("seed searched", _space({"seed": {"randint": [0, 10]}}), "cannot be searched"),
    ("val split searched", _space({"data.val_size": {"choice": [50, 100]}}), "cannot be searched"),
    ("unknown distribution", _space({"optim.lr": {"normal": [0.1, 1]}}), "unknown distribution 'normal'"),
    ("two distributions", _space({"optim.lr": {"uniform": [0.1, 1], "choice": [1]}}), "exactly one distribution"),
    ("range not a pair", _space({"optim.lr": {"uniform": [0.1]}}), "takes [low, high]"),
    ("empty choice", _space({"optim.lr": {"choice": []}}), "non-empty list"),
    ("index a scalar", _space({"optim.lr.0": {"uniform": [0.1, 1]}}), "is a single value"),
    ("word index", _space({"attack.eps.first": {"uniform": [0.1, 1]}}), "index it with a number"),
    ("uniform on an integer", _space({"attack.steps": {"uniform": [1, 3]}}), "use randint or choice"),
    ("whole section", _space({"attack": {"choice": [{}]}}), "is a whole section"),
    ("overlap", _space({"attack.eps": {"choice": [[1.0, 0.1]]}, "attack.eps.0": {"uniform": [1, 2]}}), "overlap"),
    ("no params", {"trials": 3}, "params must map"),
    ("unknown top key", _space({"optim.lr": {"uniform": [0.1, 1]}}, trails=3), "unknown key 'trails'"),
    ("bad scheduler", _space({"optim.lr": {"uniform": [0.1, 1]}}, scheduler={"name": "hyperband"}), "unknown scheduler 'hyperband'"),
    ("bad min clean", _space({"optim.lr": {"uniform": [0.1, 1]}}, objective={"min_clean_acc": 80}), "in [0, 1]"),
    ("fixed and searched", _space({"optim.lr": {"uniform": [0.1, 1]}}, overrides={"optim.lr": 0.1}), "both fixed"),
]


@pytest.mark.parametrize("name,raw,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_space_gets_one_clear_line(name: str, raw: dict, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        space_from_dict(raw, source="bad.yaml")
    message = str(err.value)
    assert fragment in message and "\n" not in message and message.startswith("bad.yaml"), message


BAD_AGAINST_BASE = [
    ("index past the list", {"attack.eps.5": {"uniform": [0.1, 1.0]}}, "has 2 elements"),
    ("l_inf radius above 1", {"attack.eps.1": {"uniform": [0.05, 2.0]}}, "l_inf radius 2.0 is above 1"),
    ("string for a number", {"optim.lr": {"choice": ["fast"]}}, "expected a number"),
    ("list of the wrong length", {"method.loss_weights": {"choice": [[1, 1, 1]]}}, "one per sub-model"),
    ("not a method", {"method.name": {"choice": ["mat", "magic"]}}, "method.name 'magic' is unknown"),
]


@pytest.mark.parametrize("name,params,fragment", BAD_AGAINST_BASE, ids=[b[0] for b in BAD_AGAINST_BASE])
def test_values_are_validated_against_the_base_config(tiny_raw: dict, name: str, params: dict,
                                                       fragment: str) -> None:
    space = space_from_dict(_space(params), source="bad.yaml")
    with pytest.raises(UserError) as err:
        space.check_against(space.base_raw(tiny_raw))
    message = str(err.value)
    assert fragment in message and "\n" not in message and "bad.yaml: params." in message, message


def test_malformed_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("params:\n  optim.lr: {uniform: [0.1, 1\n")
    with pytest.raises(UserError) as err:
        load_space(path)
    assert "malformed YAML" in str(err.value) and "\n" not in str(err.value)


def test_cli_prints_one_line_and_exits_2_for_a_bad_space(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": "mnist5k-mat", "params": {"attack.eps.0": {"uniform": [5.0, 1.0]}}}))
    proc = subprocess.run([sys.executable, "-m", "mat_dist.cli.main", "tune", "--space", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("matd: error:") and "empty range" in lines[0], proc.stderr


def test_parsed_space_becomes_a_ray_space_and_trial_configs(tiny_raw: dict) -> None:
    from ray import tune

    space = space_from_dict(_space({
        "attack.eps.0": {"loguniform": ["1e-1", 2.0]},   # YAML reads 1e-1 as a string: accepted for bounds
        "attack.alpha": {"choice": [[0.5, 0.05], [0.25, 0.02]]},
        "method.loss_weights": {"grid": [[1, 1], [1, 2]]},
        "attack.steps": {"randint": [1, 4]},
        "optim.lr": {"uniform": [0.0005, 0.002]},
    }), source="s.yaml")
    assert [p.dist for p in space.params] == [Dist.LOGUNIFORM, Dist.CHOICE, Dist.GRID, Dist.RANDINT, Dist.UNIFORM]
    space.check_against(space.base_raw(tiny_raw))
    ray_space = space.ray_param_space()
    assert isinstance(ray_space["attack.eps.0"], tune.search.sample.Float)
    assert ray_space["method.loss_weights"] == {"grid_search": [[1, 1], [1, 2]]}
    # Ray hands numpy scalars to trials: they must land in the typed config as Python numbers
    cfg = trial_config(tiny_raw, {"attack.eps.0": np.float64(0.3), "attack.steps": np.int64(3),
                                  "attack.alpha": [0.25, 0.02], "method.loss_weights": [1, 2]})
    assert cfg.attack.eps == [0.3, 0.1] and cfg.attack.steps == 3 and cfg.method.loss_weights == [1.0, 2.0]
    assert cfg.eval == config_from_dict(tiny_raw).eval


def test_trial_config_refuses_eval_and_seed_even_from_a_hand_built_dict(tiny_raw: dict) -> None:
    for key, value in (("eval.eps.linf", 0.001), ("seed", 3)):
        with pytest.raises(UserError, match="cannot be searched"):
            trial_config(tiny_raw, {key: value})
