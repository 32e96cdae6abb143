"""The fast path's switches (train.precision, train.channels_last, train.compile): each trains, each is honoured.

No assertion on time: ``bench_switches`` measures; here it only has to run.
"""

import copy
import json
import math
import os
import shutil

import pytest
import torch
from torch import nn

from conftest import TINY
from mat_dist.bench.method_costs import SWITCHES, BenchSettings, bench_switches
from mat_dist.core.checkpoint import load_checkpoint, save_checkpoint
from mat_dist.core.run_config import Precision, RunConfig, TrainConfig, config_from_dict
from mat_dist.data import load_splits
from mat_dist.plumbing.errors import UserError
from mat_dist.core.fast_path import AutocastForward
from mat_dist.core.models import build_model
from mat_dist.core.trainer import Trainer

BF16_RTOL = 5e-3  # one step's loss, bf16 vs fp32 (measured 1.4e-4 on the tiny config; bf16 keeps 8 mantissa bits)


def _has_cxx() -> bool:
    """Inductor builds its CPU kernels with a C++ compiler (g++ unless CXX says otherwise)."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def _trainer(tiny_raw, **train) -> Trainer:
    """A trainer of the tiny config whose epoch is one batch of 32 rows."""
    tiny_raw["data"]["limit_train"] = 32
    tiny_raw["train"].update(train)
    cfg = config_from_dict(tiny_raw)
    splits = load_splits(cfg.data.name, val_size=cfg.data.val_size, seed=cfg.seed, limit_train=cfg.data.limit_train)
    return Trainer(cfg, splits, device=torch.device("cpu"))


def _one_step(trainer: Trainer) -> float:
    assert len(trainer.batches) == 1
    loss = trainer.train_epoch(0)["train/loss"]
    assert math.isfinite(loss)
    return loss


def _first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.fixture(scope="module")
def compiled():
    """A train.compile=true trainer and its first step's loss (None where no compiler can build the kernels)."""
    trainer = _trainer(copy.deepcopy(TINY), compile=True)
    if not _has_cxx():
        with pytest.raises(Exception):  # inductor cannot build its kernels: the step fails loudly
            _one_step(trainer)
        return trainer, None
    return trainer, _one_step(trainer)


def test_bf16_runs_the_forwards_in_bf16_and_keeps_weights_fp32(tiny_raw):
    trainer = _trainer(tiny_raw, precision="bf16")
    assert isinstance(trainer.fast_net, AutocastForward)
    dtypes = []
    hook = _first_conv(trainer.net).register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    _one_step(trainer)
    hook.remove()
    steps = trainer.cfg.attack.steps
    assert dtypes == [torch.bfloat16] * (steps + 1)  # K attack forwards, one outer forward
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())


def test_bf16_loss_is_close_to_fp32(tiny_raw):
    import copy

    fp32 = _one_step(_trainer(copy.deepcopy(tiny_raw)))
    bf16 = _one_step(_trainer(tiny_raw, precision="bf16"))
    assert bf16 == pytest.approx(fp32, rel=BF16_RTOL)
    assert bf16 != fp32  # autocast was on


def test_channels_last_puts_conv_weights_and_activations_in_nhwc(tiny_raw):
    trainer = _trainer(tiny_raw, channels_last=True)
    convs = [m for m in trainer.net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    nhwc = []
    hook = convs[0].register_forward_hook(
        lambda mod, inp, out: nhwc.append(out.is_contiguous(memory_format=torch.channels_last)))
    _one_step(trainer)
    hook.remove()
    assert nhwc and all(nhwc)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)  # the optimiser kept it


def test_compile_wraps_the_training_forward_and_matches_eager(compiled, tiny_raw):
    trainer, loss = compiled
    assert isinstance(trainer.fast_net, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.fast_net._orig_mod is trainer.net  # same parameters as the module that is saved
    if loss is None:
        pytest.skip("no C++ compiler (g++ or $CXX): checked that the compiled step fails, not what it computes")
    eager = _trainer(tiny_raw)
    assert loss == pytest.approx(_one_step(eager), rel=1e-4)  # same weights, batch and attack seed
    # The gradients, read from Adam's first moment: after one step the weights themselves differ by
    # up to lr where a gradient is ~0, since Adam's first step is ~lr * sign(g).
    for p, q in zip(trainer.net.parameters(), eager.net.parameters()):
        torch.testing.assert_close(trainer.optimizer.state[p]["exp_avg"], eager.optimizer.state[q]["exp_avg"],
                                   rtol=1e-4, atol=1e-7)


def test_checkpoint_of_a_compiled_run_loads_into_a_plain_model(compiled, tmp_path):
    t, _ = compiled
    assert any(k.startswith("_orig_mod.") for k in t.fast_net.state_dict())  # why the plain module is saved
    folder = save_checkpoint(tmp_path, net=t.net, state=t.state_dict(), keep=1)
    loaded = load_checkpoint(folder, expect=t.spec).net
    assert type(loaded) is type(t.net)
    assert list(loaded.state_dict()) == list(build_model(t.spec).state_dict()) == list(t.net.state_dict())
    for key, value in t.net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("train, message", [
    ({"precision": "fp8"}, "train.precision: 'fp8' is not one of fp32, bf16"),
    ({"channels_last": "yes"}, "train.channels_last: expected true or false"),
    ({"compile": 1}, "train.compile: expected true or false"),
])
def test_bad_switch_values_are_one_line_user_errors(tiny_raw, train, message):
    tiny_raw["train"].update(train)
    with pytest.raises(UserError, match=message) as info:
        config_from_dict(tiny_raw)
    assert "\n" not in str(info.value)


def test_a_precision_given_in_python_is_checked_too():
    # Built in Python the schema checks it too (pydantic's own error; from YAML or overrides it is one line).
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="'fp32' or 'bf16'"):
        RunConfig(train=TrainConfig(precision="fp8"))
    assert RunConfig(train=TrainConfig(precision="bf16")).train.precision == Precision.BF16


def test_bench_switches_times_every_switch(compiled):
    # The fixture's shapes (8x8, M=2, 32 rows): the compile case finds inductor's kernels in its cache.
    s = BenchSettings(image_shape=(1, 8, 8), batch_size=32, num_members=2, steps=2, repeats=1, warmup=0)
    result = bench_switches(s)
    rows = result["switches"]
    assert list(rows) == list(SWITCHES)
    compiled_ok = compiled[1] is not None
    for name, row in rows.items():
        if name == "compile" and not compiled_ok:
            assert list(row) == ["error"] and "\n" not in row["error"]
            continue
        assert row["median_s"] > 0 and row["ratio_to_baseline"] > 0, name
    assert rows["baseline"]["ratio_to_baseline"] == 1.0
    json.dumps(result)  # the CLI will write it as JSON
