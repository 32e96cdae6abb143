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

What ``matd evaluate`` evaluates (models by SPEC, run folders, models
files, the data set, output folders) is worked out by ``selection``; the
Python API is ``mat_dist.evaluate_model`` (``api``).

Conventions: an example is *robust* to an attack when the gated attack did not
succeed; a clean-misclassified example counts as broken by every attack
(``success=True``, ``perturbation_norm=0``, ``clean_correct=False``), so no
union ever counts it as robust. Only ``runner`` imports Ray; only
``mat_dist.plumbing.tracking`` talks to MLflow.
"""
