"""Configs: every shipped file validates; bad ones are refused with one line naming the key."""

import pytest
import yaml

from mat_dist.core.run_config import (
    SHIPPED_CONFIGS, apply_run_overrides, config_from_dict, config_to_dict, config_to_yaml, load_config,
)
from mat_dist.plumbing.errors import UserError
from mat_dist.core.threats import Norm

SHIPPED = sorted(SHIPPED_CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_validates_and_opens_with_its_command(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    head = path.read_text().splitlines()[:3]
    assert any(line.startswith("# Run: matd train --config") for line in head)


def test_round_trip_through_yaml_is_exact():
    cfg = load_config("mnist5k-mat")
    again = config_from_dict(yaml.safe_load(config_to_yaml(cfg)))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again == cfg


def test_overrides_change_one_field_each():
    cfg = load_config("mnist5k-mat", ["train.epochs=3", "attack.eps=[4, 0.5, 0.05]", "eval.eps.linf=0.2"])
    assert cfg.train.epochs == 3
    assert cfg.attack.eps == [4.0, 0.5, 0.05]
    assert cfg.eval.eps[Norm.LINF] == 0.2
    assert cfg.attack.norms == [Norm.L1, Norm.L2, Norm.LINF]


def _raw():
    return config_to_dict(load_config("mnist5k-mat"))


BAD = [
    ("unknown top key", {"trian": {}}, "unknown config key 'trian'"),
    ("unknown nested key", {"attack": {"epss": [1]}}, "unknown config key 'attack.epss'"),
    ("wrong type", {"data": {"batch_size": "big"}}, "data.batch_size: expected an integer"),
    ("bool for int", {"train": {"epochs": True}}, "train.epochs: expected an integer"),
    ("negative radius", {"attack": {"eps": [5.0, -1.0, 0.1]}}, r"attack.eps\[1\]: l2 radius -1.0 must be positive"),
    ("zero radius", {"eval": {"eps": {"l1": 0}}}, "eval.eps.l1: l1 radius 0.0 must be positive"),
    ("linf in 0-255", {"attack": {"eps": [5.0, 1.0, 8]}}, "l_inf radius 8.0 is above 1"),
    ("unknown norm", {"attack": {"norms": ["l1", "l3", "linf"]}}, "'l3' is not one of linf, l2, l1"),
    ("norms not M", {"attack": {"norms": ["l1", "l2"], "eps": [1, 1], "alpha": [1, 1]}},
     "attack.norms has 2 entries but model.num_members is 3"),
    ("eps length", {"attack": {"eps": [1.0, 0.1]}}, "need the same length"),
    ("unknown method", {"method": {"name": "magic"}}, "method.name 'magic' is unknown"),
    ("unknown backbone", {"model": {"backbone": "vgg"}}, "model.backbone 'vgg' is unknown"),
    ("at needs one net", {"method": {"name": "at"}}, "set model.num_members=1"),
    ("same norm", {"method": {"name": "mat_same_norm"}}, "needs the same norm"),
    ("bad weights", {"method": {"loss_weights": [1, 2]}}, "loss_weights has 2 values"),
    ("schedule", {"optim": {"schedule": [[0.2, 1.0], [1.0, 0.0]]}}, "optim.schedule"),
    ("warmup", {"attack": {"warmup": 1.5}}, "attack.warmup"),
    ("unknown dataset", {"data": {"name": "imagenet"}}, "data.name: 'imagenet' is not one of"),
    ("section not mapping", {"data": [1, 2]}, "config key data must be a mapping"),
]


@pytest.mark.parametrize("case, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_clear_line(case, change, message):
    raw = _raw()
    for section, values in change.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    with pytest.raises(UserError, match=message) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  name: mnist5k\n  batch_size: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml is malformed YAML at line \d+"):
        load_config(path)


def test_yaml_with_python_tags_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(path)


def test_missing_config_lists_shipped_ones():
    with pytest.raises(UserError, match="mnist5k-mat"):
        load_config("no-such-config")


def test_bad_override_syntax():
    with pytest.raises(UserError, match="not of the form key.sub=value"):
        apply_run_overrides({}, ["train.epochs"])
