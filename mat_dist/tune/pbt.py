"""Population Based Training: a learned per-epoch schedule of radii, step sizes and loss weights.

With ``scheduler: pbt`` the sweep's trials are one population (Ray Tune's
``PopulationBasedTraining``, Jaderberg et al. 2017). Every
``perturbation_interval`` epochs a trial in the bottom ``quantile_fraction``
of the population (by the honest objective: the base's validation union
under its ``eval.attack``) stops, takes the weights, optimiser and RNG state
of a trial in the top share (exploit), and goes on with that trial's values
perturbed (explore: a range value times 0.8 or 1.2, clipped to its range; a
choice one step left or right; either drawn afresh with
``resample_probability``).

``burn_in`` holds the first decision back: at the paper's radii the union
objective is exactly 0 for the first third of a run, and decisions among
ties copy at random.

A trial's values therefore change during training, and what it trained with
is a schedule. Each trial keeps it in ``RunConfig.schedule`` form: phase 0
holds the values it started with (or its donor's lineage, after an exploit),
and each exploit that changed a value adds a phase at that epoch. The
schedule travels inside every checkpoint (``Trainer.lineage``), so a trial
that exploits another inherits the other's schedule up to the epoch it
copies, then appends its own values. The trial's config.yaml is always its
whole schedule: the best trial's exported config replays it with
``matd train --config`` as it is.

Each exploit is recorded in the trial's folder as a line of exploits.jsonl
(epoch, the trial copied, the values before and after), and the trial's
metrics.jsonl is replaced by the copied trial's lines up to that epoch, so a
trial's history is the history of the weights it holds.

PBT needs single-process trials (``workers.num: 1``): an exploit restarts the
trial from another trial's Tune checkpoint, which a Ray Train job per trial
(that resumes from its own storage) does not take.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

from mat_dist.plumbing.atomic import append_jsonl, jsonl_text, read_jsonl, write_atomic
from mat_dist.core.run_config import RunConfig, config_from_dict, config_to_yaml
from mat_dist.plumbing.errors import UserError
from mat_dist.tune.space import Dist, SearchSpace, list_key, set_space_key

EXPLOITS_FILE = "exploits.jsonl"
# RunConfig.schedule's name for each schedulable key
PHASE_FIELD = {"attack.eps": "eps", "attack.alpha": "alpha", "method.loss_weights": "loss_weights"}


class ClipToBounds:
    """PBT's explore step multiplies range values by 0.8 or 1.2; keep them inside the space's ranges."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high) in self.bounds.items():
            if key in config:
                config[key] = min(max(float(config[key]), low), high)
        return config


def pbt_scheduler(space: SearchSpace):
    """Ray Tune's PBT over the space's params, deciding every ``perturbation_interval`` epochs."""
    from ray.tune.schedulers import PopulationBasedTraining

    s = space.scheduler
    mutations = {p.key: (list(p.values) if p.dist is Dist.CHOICE else p.to_ray()) for p in space.params}
    bounds = {p.key: (p.low, p.high) for p in space.params if p.dist in (Dist.UNIFORM, Dist.LOGUNIFORM)}
    # Tune's PBT draws with Python's global random module: seeding it makes a sweep's decisions repeatable
    # as far as the trials' finishing order allows.
    random.seed(space.seed)
    return PopulationBasedTraining(time_attr="epoch", perturbation_interval=s.perturbation_interval,
                                   burn_in_period=s.burn_in,
                                   hyperparam_mutations=mutations, quantile_fraction=s.quantile_fraction,
                                   resample_probability=s.resample_probability,
                                   custom_explore_fn=ClipToBounds(bounds), synch=s.synch, log_config=True)


def check_shape(shape_kind: str, source: str) -> None:
    if shape_kind != "process":
        raise UserError(f"{source}: scheduler pbt needs single-process trials (workers.num: 1 in the cluster "
                        f"file): an exploited trial restarts from another trial's checkpoint, which a Ray Train "
                        f"job per trial does not take")


def scheduled_lists(keys: list[str]) -> list[str]:
    """The schedulable lists the searched keys touch: ``attack.eps.0`` -> ``attack.eps``."""
    return list(dict.fromkeys(list_key(k) for k in keys))


def _current_lists(base_raw: dict, params: dict[str, Any], lists: list[str]) -> tuple[dict, dict[str, list]]:
    """The base with the trial's current values set, and those values as whole lists."""
    from mat_dist.core.run_config import scheduled_values

    raw = copy.deepcopy(base_raw)
    for key, value in params.items():
        set_space_key(raw, key, value, where=f"trial parameter {key}")
    raw["schedule"] = []  # the trial's values alone; its lineage's phases are added by the caller
    values = scheduled_values(config_from_dict(raw), 0)
    return raw, {k: list(getattr(values, PHASE_FIELD[k])) for k in lists}


def extend_schedule(inherited: list[dict[str, Any]], epoch: int, values: dict[str, list]) -> list[dict[str, Any]]:
    """The schedule of a trial (re)starting at 0-based ``epoch`` with ``values``: the inherited phases before
    ``epoch``, then a phase at ``epoch`` with the lists that differ from those in force (all of them at 0)."""
    phases = [p for p in inherited if int(p["epoch"]) < epoch]
    in_force: dict[str, list] = {}
    for phase in phases:
        for key, name in PHASE_FIELD.items():
            if name in phase:
                in_force[key] = list(phase[name])
    changed = {PHASE_FIELD[k]: [float(x) for x in v] for k, v in values.items()
               if [float(x) for x in in_force.get(k, [])] != [float(x) for x in v]}
    return phases + ([{"epoch": epoch, **changed}] if changed else [])


def prepare_pbt_trial(spec: dict[str, Any], params: dict[str, Any], trial_id: str, folder: Path,
                      state: dict[str, Any] | None) -> tuple[RunConfig, dict[str, Any]] | None:
    """The trial's config (current values + whole schedule) and its lineage, written to its folder; None when
    the checkpoint is past the last epoch (a decision at the end of training: nothing is left to train, and
    the trial keeps what it has).

    ``state``: the checkpoint's trainer state the trial restarts from (its own after a pause, another
    trial's after an exploit), or None for a fresh start.
    """
    import json

    lineage = json.loads(state.get("lineage", "{}")) if state else {}
    epoch = int(state["epoch"]) if state else 0
    if epoch >= int(spec["base"]["train"]["epochs"]):
        return None
    raw, values = _current_lists(spec["base"], params, spec["pbt_lists"])
    schedule = extend_schedule(lineage.get("schedule", []), epoch, values)
    raw["schedule"] = schedule
    raw["name"] = f"{spec['base']['name']}-{trial_id}"
    cfg = config_from_dict(raw)
    donor = lineage.get("trial")
    if donor is not None and donor != trial_id:  # an exploit: this trial now holds the donor's weights
        append_jsonl(folder / EXPLOITS_FILE, {"epoch": epoch, "from_trial": donor,
                                              "before": lineage.get("params", {}), "after": dict(params)})
        donor_lines = [r for r in read_jsonl(folder.parent / donor / "metrics.jsonl") if int(r["epoch"]) <= epoch]
        write_atomic(folder / "metrics.jsonl", jsonl_text(donor_lines))
    write_atomic(folder / "config.yaml", config_to_yaml(cfg))
    return cfg, {"trial": trial_id, "params": dict(params), "schedule": schedule}


def exploits(folder: Path) -> list[dict[str, Any]]:
    """The exploit records of one trial folder, oldest first."""
    return read_jsonl(folder / EXPLOITS_FILE)
