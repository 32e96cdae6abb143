"""The sweep's searcher: seeded random search (Ray's BasicVariantGenerator) or Optuna's TPE (OptunaSearch).

Both are seeded by the space's ``seed:``. ``tpe`` proposes its first
``searcher.startup_trials`` trials at random, then from a model of the
objectives reported so far (Tree-structured Parzen Estimator, Bergstra et al.
2011); with ASHA, a trial the scheduler stops counts with its last objective.
Tune saves the searcher (the Optuna study, its sampler's random state) in the
experiment each time it saves the sweep, and ``Tuner.restore`` (``--resume``)
brings it back, so a resumed sweep neither forgets nor repeats its trials.

Optuna's categorical distribution holds only scalars; a ``choice`` among
lists (``method.loss_weights: {choice: [[1, 1, 1], [1, 2, 1]]}``) is searched
over the indices of its values, and the trial's config gets the value itself.
``grid`` has no TPE counterpart and is refused with ``searcher: tpe``.
"""

from __future__ import annotations

from typing import Any

from mat_dist.tune.objective import OBJECTIVE
from mat_dist.tune.space import Dist, Param, Scheduler, Searcher, SearchSpace


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class OptunaSpace:
    """Optuna define-by-run space over the space's params; plain data, so the saved searcher pickles it."""

    def __init__(self, params: tuple[Param, ...]) -> None:
        self.params = params

    def __call__(self, trial: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for p in self.params:
            if p.dist is Dist.CHOICE:
                if all(_scalar(v) for v in p.values):
                    values[p.key] = trial.suggest_categorical(p.key, list(p.values))
                else:
                    values[p.key] = p.values[trial.suggest_categorical(p.key, list(range(len(p.values))))]
            elif p.dist is Dist.UNIFORM:
                values[p.key] = trial.suggest_float(p.key, p.low, p.high)
            elif p.dist is Dist.LOGUNIFORM:
                values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=True)
            elif p.dist is Dist.RANDINT:
                values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high) - 1)  # high excluded, as Ray
            else:
                raise ValueError(f"{p.key}: {p.dist.value} cannot be searched by TPE")
        return values


def search_alg(space: SearchSpace, *, concurrency: int) -> tuple[Any, dict[str, Any]]:
    """The Tune search algorithm of ``space`` and the param space to hand the Tuner with it."""
    if space.searcher.name is Searcher.TPE:
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one INFO line per trial otherwise
        sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=space.searcher.startup_trials)
        searcher = OptunaSearch(space=OptunaSpace(space.params), metric=OBJECTIVE, mode="max", sampler=sampler)
        # The searcher holds the space; the Tuner gets none (Tune refuses two).
        return ConcurrencyLimiter(searcher, max_concurrent=concurrency), {}
    from ray.tune.search import BasicVariantGenerator

    # A SearchGenerator ignores TuneConfig(max_concurrent_trials) (Ray warns): the generator bounds it.
    # A PBT population must exist whole (trials pause and wait for one another at each decision point):
    # the cluster's resources alone bound the trials that run at once.
    live = 0 if space.scheduler.name is Scheduler.PBT else concurrency
    return BasicVariantGenerator(random_state=space.seed, max_concurrent=live), space.ray_param_space()
