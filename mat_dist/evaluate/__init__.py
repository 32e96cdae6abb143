"""The evaluator: an attack suite, one gate, a sharded Ray runner, per-example results.

Data flow (one way):

    suite YAML -> Suite (attacks with norm, radius, parameters)
               -> jobs (suite attacks on the deployed ensemble, transfer attacks
                  per source model, curve points) -> shards (job x example range)
    shard      -> attack adapter (own PGD, foolbox 3, pyautoattack) -> gate
               -> rows in OUT/shards/<job>__<start>-<end>.parquet (atomic)
    merge      -> OUT/results.parquet (+ transfer.parquet, curves.parquet)
               -> summary.json (clean, per attack, all_<norm>, all_attacks),
                  report.md (paper Table 4 shape), curves CSV/PNG, warnings

Conventions: an example is *robust* to an attack when the gated attack did not
succeed; a clean-misclassified example counts as broken by every attack
(``success=True``, ``perturbation_norm=0``, ``clean_correct=False``), so no
union ever counts it as robust. Only ``runner`` imports Ray; only
``mat_dist.tracking`` talks to MLflow.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    """``mat_dist.evaluate(model, ...)`` calls ``api.evaluate_model``: the package is the API's name, and a
    function of that name in ``mat_dist`` would be replaced by this package the moment it is imported."""

    def __call__(self, model, **kwargs):
        from mat_dist.evaluate.api import evaluate_model

        return evaluate_model(model, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
