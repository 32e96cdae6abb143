"""Attack adapters: each maps (model, x, y, norm, eps, params, seed) to adversarial images.

An adapter only runs its library's attack; it never decides success. The
evaluator passes every output through ``mat_dist.evaluate.gate.gate``.
"""
