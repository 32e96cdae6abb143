"""Ray Tune search over a run config: search spaces, the trial, the sweep, the best config.

    from mat_dist.tune import SweepSettings, load_space, run_sweep
    space = load_space("tune_spaces/mnist5k-cpu.yaml")      # typed, validated search space
    result = run_sweep(space, SweepSettings(output=Path("runs/tune-mnist5k-cpu")))

- ``space``: the YAML format of ``tune_spaces/*.yaml`` -> ``SearchSpace`` -> Ray Tune param space;
- ``objective``: the trial (the core ``Trainer`` in the trial's process, or a Ray Train job) and
  the objective it reports each epoch (union robust accuracy at the base config's FIXED eval radii);
- ``sweep``: the driver, named steps (prepare, fit, tabulate, fidelity, confirm, report; resume, MLflow parent run);
- ``trials``: the trial plumbing the sweep and its fidelity step share (shape, trial function, Ray's run settings);
- ``searchers``: seeded random search or Optuna's TPE; ``pareto``: robustness against training cost;
- ``fidelity``: the top trials re-trained at the full budget, the proxy's rank correlation;
- ``confirm``: the best and the base config trained with N seeds and evaluated on the test images;
- ``report``: the sweep's report.md.

Nothing here imports Ray or MLflow at import time.
"""

from mat_dist.tune.space import SearchSpace, load_space, space_from_dict

__all__ = ["SearchSpace", "SweepSettings", "load_space", "run_sweep", "space_from_dict"]


def __getattr__(name: str):
    if name in ("run_sweep", "SweepSettings"):
        from mat_dist.tune import sweep

        return getattr(sweep, name)
    raise AttributeError(name)
