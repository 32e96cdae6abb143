"""Attack adapters: each maps (model, x, y, norm, eps, params, seed) to adversarial images.

An adapter only runs its library's attack; it never decides success. The
evaluator passes every output through ``mat_dist.evaluate.gate.gate``. Here: own PGD (``own``) and
foolbox 3 (``fb``); AutoAttack's adapter is ``mat_dist.core.autoattack``, which the per-epoch check shares.
"""
