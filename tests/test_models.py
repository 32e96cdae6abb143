"""MIMO models, the deployed ensemble, checkpoints and the public load_model API."""

import math

import pytest
import torch

import mat_dist
from mat_dist.core.checkpoint import (
    WEIGHTS, latest_checkpoint, load_checkpoint, load_latest_checkpoint, load_weights, save_checkpoint,
    save_weights,
)
from mat_dist.plumbing.errors import UserError
from mat_dist.core.models import BACKBONES, DeployedEnsemble, EnsembleOutput, ModelKind, ModelSpec, build_model


def spec(**kw):
    base = dict(backbone="mnist_cnn", num_members=3, in_channels=1, image_size=(8, 8), num_classes=10,
                mean=(0.5,), std=(0.25,))
    return ModelSpec(**(base | kw))


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("kind", list(ModelKind))
def test_every_backbone_maps_m_inputs_to_m_heads(backbone, kind):
    net = build_model(spec(backbone=backbone, kind=kind, in_channels=3, mean=(0.5,) * 3, std=(0.2,) * 3,
                           image_size=(16, 16)))
    assert net(torch.rand(2, 3, 3, 16, 16)).shape == (2, 3, 10)


def test_mimo_stacks_inputs_on_channels_of_one_backbone():
    net = build_model(spec())
    first = net.backbone.features[0]
    assert first.in_channels == 3 and net.backbone.classifier[-1].out_features == 30


def test_heads_depend_on_their_own_slot():
    # Changing slot 2's image changes head 2's logits in a MIMO net (shared trunk),
    # but never head 0's in separate networks.
    torch.manual_seed(0)
    x = torch.rand(4, 3, 1, 8, 8)
    x2 = x.clone()
    x2[:, 2] = torch.rand(4, 1, 8, 8)
    sep = build_model(spec(kind=ModelKind.SEPARATE))
    torch.testing.assert_close(sep(x)[:, 0], sep(x2)[:, 0])
    assert not torch.allclose(sep(x)[:, 2], sep(x2)[:, 2])


def test_normalisation_is_inside_the_model():
    net = build_model(spec())
    assert torch.equal(net.normalize.mean.flatten(), torch.tensor([0.5]))
    x = torch.full((1, 3, 1, 8, 8), 0.5)
    assert torch.equal(net.normalize(x), torch.zeros_like(x))  # pixel 0.5 -> normalised 0


def test_deployed_ensemble_is_log_of_mean_softmax_or_mean_logits():
    torch.manual_seed(0)
    net = build_model(spec())
    x = torch.rand(5, 1, 8, 8)
    logits = net(x.unsqueeze(1).expand(-1, 3, -1, -1, -1))
    deployed = DeployedEnsemble(net)
    expected = logits.softmax(-1).mean(1).log()
    torch.testing.assert_close(deployed(x), expected)
    assert torch.allclose(deployed(x).exp().sum(1), torch.ones(5))
    mean_logits = DeployedEnsemble(build_model(spec(ensemble_output=EnsembleOutput.LOGITS_MEAN)))
    mean_logits.net.load_state_dict(net.state_dict())
    torch.testing.assert_close(mean_logits(x), logits.mean(1))
    torch.testing.assert_close(deployed.member(1)(x), logits[:, 1])


def test_save_and_load_model_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_model(spec())
    save_weights(net, tmp_path / WEIGHTS)
    model = mat_dist.load_model(tmp_path)
    assert not model.training
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(model(x), DeployedEnsemble(net)(x))
    head = mat_dist.load_model(tmp_path / WEIGHTS, member=2)
    torch.testing.assert_close(head(x), net(x.unsqueeze(1).expand(-1, 3, -1, -1, -1))[:, 2])


def test_checkpoint_of_other_architecture_or_m_is_refused(tmp_path):
    save_weights(build_model(spec(num_members=2)), tmp_path / WEIGHTS)
    with pytest.raises(UserError, match="M=2.*but this run builds.*M=3"):
        load_weights(tmp_path / WEIGHTS, expect=spec())


def test_truncated_weights_file_is_a_user_error(tmp_path):
    save_weights(build_model(spec()), tmp_path / WEIGHTS)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged"):
        mat_dist.load_model(tmp_path / WEIGHTS)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(UserError, match="not written by mat-dist"):
        mat_dist.load_model(tmp_path / "x.safetensors")


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned-by-checkpoint",))


def test_state_file_with_pickled_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = build_model(spec())
    path = save_checkpoint(tmp_path / "ck", net=net, state={"epoch": 1}, keep=2)
    torch.save({"epoch": 1, "evil": _Evil()}, path / "state.pt")
    with pytest.raises(UserError, match="does not load safely"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_checkpoints_are_pruned_and_a_damaged_newest_is_skipped(tmp_path):
    net = build_model(spec())
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, net=net, state={"epoch": epoch, "w": torch.ones(1) * epoch}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002", "epoch-0003"]
    assert latest_checkpoint(tmp_path).name == "epoch-0003"
    (tmp_path / "epoch-0003" / "state.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        found = load_latest_checkpoint(tmp_path)
    assert found.path.name == "epoch-0002" and found.state["epoch"] == 2


def test_softmax_mean_scores_are_log_probabilities():
    logits = torch.tensor([[[0.0, 0.0], [10.0, -10.0]]])  # (B=1, M=2, K=2)
    from mat_dist.core.models import ensemble_scores
    scores = ensemble_scores(logits, EnsembleOutput.SOFTMAX_MEAN)
    assert scores.exp().sum().item() == pytest.approx(1.0)
    assert scores[0, 0].exp().item() == pytest.approx((0.5 + 1 / (1 + math.exp(-20))) / 2)


def test_a_writer_killed_mid_write_leaves_nothing_behind_the_next_save(tmp_path):
    (tmp_path / ".tmp-abc123").mkdir()
    (tmp_path / ".tmp-abc123" / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, net=build_model(spec()), state={"epoch": 1}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001"]
