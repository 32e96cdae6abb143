"""scripts/score_proxy.py: another proxy, trained on the trials of a finished fidelity step and ranked against
their full-budget objectives."""

import csv
import importlib.util
import json
from pathlib import Path

from scipy.stats import spearmanr

from mat_dist.core.run_config import config_from_dict, config_to_yaml, load_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "score_proxy.py"
LRS = {"t0": 0.01, "t1": 1e-7, "t2": 0.003}
FULL = {"t0": 0.30, "t1": 0.0, "t2": 0.20}  # what the (pretend) fidelity step measured at the full budget


def _script():
    spec = importlib.util.spec_from_file_location("score_proxy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sweep(tmp_path, tiny_raw) -> Path:
    """A sweep folder as `matd tune --fidelity` leaves it: sweep.json, each trial's config, fidelity.csv."""
    sweep = tmp_path / "sweep"
    for trial, lr in LRS.items():
        raw = {**tiny_raw, "name": f"trial-{trial}", "optim": {**tiny_raw["optim"], "lr": lr}}
        (sweep / "trials" / trial).mkdir(parents=True)
        (sweep / "trials" / trial / "config.yaml").write_text(config_to_yaml(config_from_dict(raw)))
    (sweep / "sweep.json").write_text(json.dumps({"space": {"objective": {"min_clean_acc": None}}}))
    with (sweep / "fidelity.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "full_objective", "complete"])
        w.writerows([[t, v, True] for t, v in FULL.items()])
    return sweep


def test_each_trial_trains_on_the_proxy_and_the_rank_correlation_is_scipys(tmp_path, tiny_raw):
    sweep, out = _sweep(tmp_path, tiny_raw), tmp_path / "proxy"
    argv = ["--sweep", str(sweep), "--output", str(out), "--set", "train.epochs=1", "--set", "data.limit_train=96"]
    assert _script().main(argv) == 0
    rows = list(csv.DictReader((out / "proxy.csv").open()))
    assert [r["trial_id"] for r in rows] == list(LRS)
    for r in rows:
        cfg = load_config(out / r["trial_id"] / "config.yaml")
        assert (cfg.train.epochs, cfg.data.limit_train, cfg.optim.lr) == (1, 96, LRS[r["trial_id"]])
        last = json.loads((out / r["trial_id"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert float(r["proxy_objective"]) == last["val/robust_all"] and r["proxy_epochs"] == "1"
        assert float(r["full_objective"]) == FULL[r["trial_id"]]
    summary = json.loads((out / "proxy.json").read_text())
    expected = spearmanr([float(r["proxy_objective"]) for r in rows], list(FULL.values())).statistic
    assert summary["n"] == 3 and expected == expected  # defined: the lr 1e-7 trial learns nothing, the others do
    assert summary["spearman"] == expected
    model = out / "t0" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    assert _script().main(argv) == 0 and model.stat().st_mtime_ns == stamp  # a re-run trains nothing again


def test_a_sweep_without_a_fidelity_step_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "sweep").mkdir()
    assert _script().main(["--sweep", str(tmp_path / "sweep"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("score_proxy:") and "no fidelity.csv" in err and "\n" not in err
