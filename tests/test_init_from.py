"""Fine-tuning (``train.init_from``): exact weights, one network into M sub-models, and every bad source refused
with one line before a run folder exists."""

import copy
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from mat_dist.core.checkpoint import save_weights
from mat_dist.core.run_config import config_from_dict
from mat_dist.plumbing.errors import UserError
from mat_dist.core.init_from import initial_state, one_network
from mat_dist.core.models import ModelKind, ModelSpec, build_model
from mat_dist.core.models.mimo import DeployedEnsemble
from mat_dist.training.in_process import train_in_process


def spec(members: int, backbone: str = "mnist_cnn", kind: ModelKind = ModelKind.MIMO, channels: int = 1) -> ModelSpec:
    return ModelSpec(backbone=backbone, num_members=members, in_channels=channels, image_size=(8, 8),
                     num_classes=10, mean=(0.5,) * channels, std=(0.25,) * channels, kind=kind)


def trained_source(backbone: str = "mnist_cnn", channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(3)
    net = build_model(spec(1, backbone, channels=channels))
    with torch.no_grad():  # weights no initialiser would give, so a copy cannot pass by chance
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.parametrize("members", [1, 3, 5])
@pytest.mark.parametrize("backbone", ["mnist_cnn", "preact_resnet18"])
def test_one_network_starts_m_sub_models_that_predict_what_it_did(tmp_path, members, backbone):
    source = trained_source(backbone)
    save_weights(source, tmp_path / "source.safetensors")
    net = build_model(spec(members, backbone))
    net.load_state_dict(initial_state(str(tmp_path / "source.safetensors"), spec(members, backbone)))
    net.eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        expected = source(x.unsqueeze(1))[:, 0]  # (B, K): the source's logits
        heads = net(x.unsqueeze(1).expand(-1, members, -1, -1, -1))  # one image in every slot
        for m in range(members):
            torch.testing.assert_close(heads[:, m], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(DeployedEnsemble(net)(x).exp(), expected.softmax(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_every_shipped_resnet_expands_exactly_in_double_precision(tmp_path, backbone):
    """The expansion is exact, not close: in float64 the heads equal the source's logits to 1e-10 (float32's
    summation order alone leaves ~1e-5), including ResNet-18's BatchNorm right after the stem."""
    torch.set_default_dtype(torch.float64)
    try:
        source = trained_source(backbone)
        state = {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "plain.safetensors"))
        net = build_model(spec(3, backbone))
        net.load_state_dict(initial_state(str(tmp_path / "plain.safetensors"), spec(3, backbone)))
        net.eval()
        x = torch.rand(4, 1, 8, 8)
        with torch.no_grad():
            expected = source(x.unsqueeze(1))[:, 0]
            heads = net(x.unsqueeze(1).expand(-1, 3, -1, -1, -1))
        for m in range(3):
            torch.testing.assert_close(heads[:, m], expected, atol=1e-10, rtol=0)
    finally:
        torch.set_default_dtype(torch.float32)


def test_our_model_of_the_same_shape_loads_exactly_and_an_ensemble_gets_the_source_in_every_member(tmp_path):
    target = spec(3)
    trained = build_model(target)
    save_weights(trained, tmp_path / "mimo.safetensors")
    state = initial_state(str(tmp_path / "mimo.safetensors"), target)
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())
    source = trained_source()
    save_weights(source, tmp_path / "one.safetensors")
    ensemble = spec(3, kind=ModelKind.SEPARATE)
    state = initial_state(str(tmp_path / "one.safetensors"), ensemble)
    for i in range(3):
        for key, value in source.backbone.state_dict().items():
            assert torch.equal(state[f"members.{i}.{key}"], value)


def test_plain_state_dicts_load_from_safetensors_pt_and_robustbench_layout(tmp_path):
    source = trained_source()
    plain = {k: v.clone() for k, v in source.backbone.state_dict().items()}
    save_file(plain, str(tmp_path / "plain.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.items()}}, tmp_path / "nested.pt")
    for name in ("plain.safetensors", "nested.pt"):
        state = initial_state(str(tmp_path / name), spec(1))
        assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in plain.items())
    # RobustBench's PreAct ResNet-18 names (layerN.j, shortcut.0, bn) for 3-channel images
    rn = trained_source("preact_resnet18", channels=3)
    ours = rn.backbone.state_dict()
    robustbench = {}
    for key, value in ours.items():
        key = key.replace("final_bn.", "bn.").replace(".shortcut.weight", ".shortcut.0.weight")
        if key.startswith("stages."):
            stage, rest = key[len("stages."):].split(".", 1)
            key = f"layer{int(stage) + 1}.{rest}"
        robustbench[key] = value.clone()
    assert "layer2.0.shortcut.0.weight" in robustbench and "bn.weight" in robustbench
    torch.save(robustbench, tmp_path / "robustbench.pt")
    state = initial_state(str(tmp_path / "robustbench.pt"), spec(1, "preact_resnet18", channels=3))
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in ours.items())
    # a RobustBench network takes [0, 1] pixels: with model.normalize=false (mean 0, std 1) it predicts as it did
    raw = ModelSpec(backbone="preact_resnet18", num_members=3, in_channels=3, image_size=(8, 8), num_classes=10,
                    mean=(0.0,) * 3, std=(1.0,) * 3)
    net = build_model(raw)
    net.load_state_dict(initial_state(str(tmp_path / "robustbench.pt"), raw))
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        expected = rn.backbone(x)  # the plain network on raw pixels
        torch.testing.assert_close(net.eval()(x.unsqueeze(1).expand(-1, 3, -1, -1, -1))[:, 1], expected,
                                   atol=1e-5, rtol=0)
    # the common ResNet layout (layerN, shortcut.0 of conv + BN) for the non-PreAct ResNet-18
    rn18 = build_model(spec(1, "resnet18")).backbone.state_dict()
    common = {(f"layer{int(k.split('.')[1]) + 1}." + k.split(".", 2)[2]) if k.startswith("stages.") else k: v
              for k, v in rn18.items()}
    torch.save(common, tmp_path / "resnet18.pt")
    state = initial_state(str(tmp_path / "resnet18.pt"), spec(1, "resnet18"))
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in rn18.items())


class NotWeights:
    """A pickled object: what weights_only loading must refuse."""


def _bad_sources(tmp_path):
    mimo = build_model(spec(3))
    save_weights(mimo, tmp_path / "mimo.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    torch.save({"net": NotWeights()}, tmp_path / "object.pt")
    other = {k: v for k, v in one_network(spec(1)).state_dict().items()}
    other["classifier.1.weight"] = torch.zeros(512, 256)  # another hidden layer size
    save_file(other, str(tmp_path / "other.safetensors"))
    return {
        "missing": (tmp_path / "nope.safetensors", "does not exist"),
        "corrupt": (tmp_path / "corrupt.safetensors", "is damaged"),
        "truncated": (tmp_path / "truncated.pt", "is damaged or not a weights file"),
        "pickle": (tmp_path / "object.pt", "a pickle that holds more than plain weights"),
        "architecture": (tmp_path / "other.safetensors",
                         r"classifier.1.weight has shape \(512, 256\), this run's mnist_cnn needs \(1024, 256\)"),
        "mimo_into_one": (tmp_path / "mimo.safetensors", "M=3 sub-models; it cannot start a single-network method"),
    }


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "pickle", "architecture", "mimo_into_one"])
def test_bad_sources_are_one_line_and_leave_no_run_folder(tmp_path, tiny_raw, case):
    path, message = _bad_sources(tmp_path)[case]
    raw = copy.deepcopy(tiny_raw)
    raw["method"]["name"] = "at"
    raw["model"]["num_members"] = 1
    raw["attack"].update(norms=["linf"], eps=[0.1], alpha=[0.05])
    raw["train"]["init_from"] = str(path)
    with pytest.raises(UserError, match=message) as err:
        train_in_process(config_from_dict(raw), tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_the_cli_refuses_a_bad_source_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "object.pt").write_bytes(b"")
    torch.save({"net": NotWeights()}, tmp_path / "object.pt")
    out = subprocess.run([sys.executable, "-m", "mat_dist.cli.main", "train", "--config", "mnist5k-paper-mat",
                          "--cluster", "none", "--output", str(tmp_path / "run"),
                          f"train.init_from={tmp_path / 'object.pt'}", "tracking.enabled=false",
                          "data.name=digits"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "holds more than plain weights" in lines[0], out.stderr
    assert out.stdout == ""  # refused before the banner
    assert not (tmp_path / "run").exists()


def test_fine_tuning_starts_from_the_source_and_counts_only_its_own_passes(tmp_path, tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["method"]["name"] = "at"
    raw["model"]["num_members"] = 1
    raw["attack"].update(norms=["linf"], eps=[0.1], alpha=[0.05])
    raw["train"]["epochs"] = 1
    source = train_in_process(config_from_dict(raw), tmp_path / "source")
    tiny_raw["train"].update(epochs=1, init_from=str(source.output))
    tiny_raw["optim"]["schedule"] = "e_at"
    tiny_raw["attack"]["eat_sampling"] = True
    cfg = config_from_dict(tiny_raw)  # MAT, M=2, from the one AT network
    from mat_dist.data import load_splits
    from mat_dist.core.trainer import Trainer

    trainer = Trainer(cfg, load_splits(cfg.data.name, val_size=100, seed=0, limit_train=320))
    expected = initial_state(str(source.output), trainer.spec)
    assert all(torch.equal(trainer.net.state_dict()[k], v) for k, v in expected.items())
    run = train_in_process(cfg, tmp_path / "finetune")
    assert run.metrics[-1]["train/passes"] == (320 // 32) * 3 * 2  # K=2: (K+1) fwd + (K+1) bwd per batch
