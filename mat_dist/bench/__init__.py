"""Benchmarks (``matd bench``): medians of interleaved repeats, ratios of things measured in one run.

- ``methods``: one training batch of every method against the floor, and each fast-path switch alone
  (also the timing helpers and the machine description every part shares);
- ``parallel``: the evaluator's throughput and its shards on 1 and 2 Ray workers, and the same short
  training run in-process, as 1 and as 2 Ray Train workers (through ``mat_dist.training.train``).

Nothing here asserts on time; the tests check that every part runs and that the pass counts equal
the paper's Table 6.
"""
