"""The fast path's switches (train.precision, train.channels_last, train.compile): each trains, each is honoured;
``auto`` turns bf16 and channels_last on where the machine computes in bf16 natively, and the run records it.

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
from mat_dist.core import fast_path as fastpath
from mat_dist.core.fast_path import AutocastForward, FastPath, cpu_flags_have_bf16, resolve_fast_path, supports_fast_path
from mat_dist.core.models import build_model
from mat_dist.core.trainer import Trainer

FP32 = {"precision": "fp32", "channels_last": False}  # every switch off, whatever auto would choose here


@pytest.fixture
def tiny_raw(tiny_raw):
    """conftest's tiny config with the switches at their default, auto (conftest pins them to fp32)."""
    for key in FP32:
        tiny_raw["train"].pop(key)
    return tiny_raw
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
    trainer = _trainer(copy.deepcopy(TINY), compile=True, **FP32)
    if not _has_cxx():
        with pytest.raises(Exception):  # inductor cannot build its kernels: the step fails loudly
            _one_step(trainer)
        return trainer, None
    return trainer, _one_step(trainer)


def test_bf16_runs_the_forwards_in_bf16_and_keeps_weights_fp32(tiny_raw):
    trainer = _trainer(tiny_raw, precision="bf16", channels_last=False)
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

    fp32 = _one_step(_trainer(copy.deepcopy(tiny_raw), **FP32))
    bf16 = _one_step(_trainer(tiny_raw, precision="bf16", channels_last=False))
    assert bf16 == pytest.approx(fp32, rel=BF16_RTOL)
    assert bf16 != fp32  # autocast was on


def test_channels_last_puts_conv_weights_and_activations_in_nhwc(tiny_raw):
    trainer = _trainer(tiny_raw, precision="fp32", channels_last=True)
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
    eager = _trainer(tiny_raw, **FP32)
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
    ({"precision": "fp8"}, "train.precision: 'fp8' is not one of auto, fp32, bf16"),
    ({"channels_last": "yes"}, "train.channels_last: expected true, false or auto"),
    ({"channels_last": 1}, "train.channels_last: expected true, false or auto"),
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

    with pytest.raises(pydantic.ValidationError, match="'auto', 'fp32' or 'bf16'"):
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
    # The default (auto) against fp32, and what auto chose on this machine.
    assert result["ratios"]["fast_path_over_fp32"] == rows["default"]["median_s"] / rows["baseline"]["median_s"]
    assert rows["default"]["fast_path"] == resolve_fast_path(TrainConfig(), torch.device("cpu")).describe()
    json.dumps(result)  # the CLI will write it as JSON


def test_the_bench_baseline_is_fp32_whatever_the_machine(monkeypatch):
    monkeypatch.setattr(fastpath, "supports_fast_path", lambda device: True)
    cpu = torch.device("cpu")
    assert resolve_fast_path(SWITCHES["baseline"], cpu) == FastPath()
    assert resolve_fast_path(SWITCHES["bf16"], cpu) == FastPath(bf16=True)
    assert resolve_fast_path(SWITCHES["channels_last"], cpu) == FastPath(channels_last=True)
    assert resolve_fast_path(SWITCHES["default"], cpu) == FastPath(bf16=True, channels_last=True)


# ---------------------------------------------------------------- auto: the fast path where the machine has bf16

@pytest.mark.parametrize("capable", [True, False])
def test_auto_turns_bf16_and_channels_last_on_exactly_where_the_device_has_bf16(tiny_raw, monkeypatch, capable):
    asked = []
    monkeypatch.setattr(fastpath, "supports_fast_path", lambda device: asked.append(device) or capable)
    trainer = _trainer(tiny_raw, epochs=1)  # train.precision and train.channels_last at their default: auto
    assert trainer.cfg.train.precision == Precision.AUTO and trainer.cfg.train.channels_last == "auto"
    assert asked and all(d == torch.device("cpu") for d in asked)  # the training device was probed
    assert trainer.fast_path == FastPath(bf16=capable, channels_last=capable)
    assert isinstance(trainer.fast_net, AutocastForward) is capable
    assert _first_conv(trainer.net).weight.is_contiguous(memory_format=torch.channels_last) is capable
    row = {}
    trainer.fit(lambda metrics, _: row.update(metrics))
    assert row["fast_path/bf16"] == row["fast_path/channels_last"] == float(capable)
    assert row["fast_path/compile"] == 0.0


@pytest.mark.parametrize("train, expected", [
    ({"precision": "fp32", "channels_last": False}, FastPath()),
    ({"precision": "fp32"}, FastPath(channels_last=True)),
    ({"channels_last": False}, FastPath(bf16=True)),
    ({"precision": "bf16", "channels_last": True}, FastPath(bf16=True, channels_last=True)),
])
def test_an_explicit_switch_wins_over_auto(tiny_raw, monkeypatch, train, expected):
    monkeypatch.setattr(fastpath, "supports_fast_path", lambda device: True)
    trainer = _trainer(tiny_raw, **train)
    assert trainer.fast_path == expected
    assert isinstance(trainer.fast_net, AutocastForward) is expected.bf16


def test_explicit_bf16_stays_on_where_auto_would_not(tiny_raw, monkeypatch):
    monkeypatch.setattr(fastpath, "supports_fast_path", lambda device: False)
    assert _trainer(tiny_raw, precision="bf16").fast_path == FastPath(bf16=True, channels_last=False)


def test_explicit_switches_never_probe_the_machine(monkeypatch):
    def probe(device):
        raise AssertionError("probed")

    monkeypatch.setattr(fastpath, "supports_fast_path", probe)
    cfg = TrainConfig(precision="fp32", channels_last=False)
    assert resolve_fast_path(cfg, torch.device("cpu")) == FastPath()


@pytest.mark.parametrize("flags, expected", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),   # AMD Zen 4, Intel Cooper Lake
    ("flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8", True),         # Intel Sapphire Rapids
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni", False),      # AVX512 without bf16: emulated
    ("processor\t: 0\nmodel name\t: some cpu", False),                     # no flags line
])
def test_the_cpu_probe_reads_native_bf16_from_cpuinfo(flags, expected):
    assert cpu_flags_have_bf16("processor\t: 0\n" + flags + "\n") is expected


@pytest.mark.parametrize("capability, expected", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_the_cuda_probe_wants_compute_capability_8(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert supports_fast_path(torch.device("cuda")) is expected


def test_a_run_folder_records_what_auto_chose(tiny_raw, monkeypatch, tmp_path):
    from mat_dist.core.run_config import read_yaml
    from mat_dist.training import train

    monkeypatch.setattr(fastpath, "supports_fast_path", lambda device: True)
    tiny_raw["data"]["limit_train"] = 32
    tiny_raw["train"]["epochs"] = 1
    result = train(config_from_dict(tiny_raw), tmp_path / "run", cluster=None)
    run = tmp_path / "run"
    assert read_yaml(run / "config.yaml")["train"]["precision"] == "auto"  # what was asked: --resume compares
    assert read_yaml(run / "config.yaml")["train"]["channels_last"] == "auto"
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (line["fast_path/bf16"], line["fast_path/channels_last"], line["fast_path/compile"]) == (1.0, 1.0, 0.0)
    assert result.metrics[-1]["fast_path/bf16"] == 1.0
    report = (run / "report.md").read_text()
    assert ("Training forwards: bf16 autocast, channels_last (train.precision=auto, train.channels_last=auto, "
            "train.compile=false); the per-epoch check attacks the fp32 network.") in report
