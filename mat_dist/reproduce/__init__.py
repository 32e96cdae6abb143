"""``matd reproduce``: every method of the paper trained, evaluated with one suite, and reported like the paper.

    from mat_dist.reproduce import get_preset, reproduce
    result = reproduce(get_preset("tiny"), output=Path("runs/reproduce-tiny"))
    result.report   # runs/reproduce-tiny/report.md, beside fig1..fig4 PNGs and report.json

Presets (``presets.PRESETS``): tiny (CI smoke test), mnist5k-cpu (about an hour
on 2 CPU cores), mnist-paper and cifar10-paper (the paper's settings, GPU clusters).
"""

from mat_dist.reproduce.presets import PRESETS, MethodSpec, Preset, get_preset

__all__ = ["PRESETS", "MethodSpec", "Preset", "get_preset", "reproduce"]


def __getattr__(name: str):
    if name == "reproduce":  # the pipeline pulls in torch and the evaluator: import it on use
        from mat_dist.reproduce.pipeline import reproduce

        return reproduce
    raise AttributeError(name)
