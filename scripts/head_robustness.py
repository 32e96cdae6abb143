"""Each head's robustness as the deployed ensemble sees it: one image copied to every slot.

For the ensemble and for every sub-model alone (head m's logits, the image in
every slot), APGD-CE + APGD-T (3 target classes, 20 iterations) per norm on the
first N MNIST-5k test images at the paper's radii; beside each head's figure,
the ensemble's accuracy on that head's adversarial examples (transfer).

    python scripts/head_robustness.py RUN_OR_CHECKPOINT [N]
"""

import sys

import torch

from mat_dist.core.checkpoint import load_model
from mat_dist.data import load_splits
from mat_dist.core.threats import Norm
from mat_dist.core.epoch_check import apgd_attack

RADII = {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L1: 10.0}


def main(path: str, n: int) -> None:
    splits = load_splits("mnist5k", root=None, val_size=500, seed=0, limit_train=None)
    x, y = splits.test.images[:n], splits.test.labels[:n]
    ensemble = load_model(path)
    models = {"ensemble": ensemble,
              **{f"m{j}": load_model(path, member=j) for j in range(ensemble.spec.num_members)}}
    print(f"{path}: first {n} test images, APGD-CE + APGD-T (3 targets, 20 iterations), robust accuracy (%)")
    for name, model in models.items():
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        cells = [f"{name}: clean {100 * ok.float().mean():.1f}"]
        for norm, eps in RADII.items():
            x_adv = apgd_attack(model, x, y, norm, eps, 20, 3, 0)
            with torch.no_grad():
                robust = ok & (model(x_adv).argmax(1) == y)
                ens = ok & (ensemble(x_adv).argmax(1) == y)
            cells.append(f"{norm.value} {100 * robust.float().mean():.1f} (ensemble on it {100 * ens.float().mean():.1f})")
        print("  ".join(cells), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200)
