import copy

import torch
from torch import nn

from byol import BYOL
from tests.conftest import tiny_resnet


def tiny_learner(**kwargs):
    backbone = tiny_resnet(in_channels=3)
    return BYOL(backbone, projection_dim=8, projector_hidden_dim=16, predictor_hidden_dim=16, **kwargs)


def views(batch=4, size=16):
    return torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)


def test_feature_dim_inferred_by_dry_run_for_any_backbone():
    learner = tiny_learner()
    assert learner.feature_dim == 64
    custom = nn.Sequential(nn.Conv2d(1, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert BYOL(custom, projector_hidden_dim=8, predictor_hidden_dim=8).feature_dim == 5


def test_dry_run_leaves_batch_norm_statistics_alone():
    backbone = tiny_resnet()
    before = copy.deepcopy(backbone.state_dict())
    BYOL(backbone, projector_hidden_dim=8, predictor_hidden_dim=8)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_heads_are_linear_bn_relu_linear_with_paper_sizes():
    learner = BYOL(nn.Sequential(nn.Flatten(), nn.Linear(12, 2048)), feature_dim=2048)
    kinds = [type(m) for m in learner.online_projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert learner.online_projector[0].out_features == 4096 and learner.online_projector[3].out_features == 256
    assert learner.predictor[0].in_features == 256 and learner.predictor[3].out_features == 256
    assert not hasattr(learner, "target_predictor")


def test_loss_is_symmetrised_sum_of_both_directions():
    learner = tiny_learner()
    v1, v2 = views()
    torch.manual_seed(1)
    state = copy.deepcopy(learner.state_dict())
    loss = learner(v1, v2)
    learner.load_state_dict(state)
    from byol import byol_loss

    _, _, p1 = learner.online(v1)
    _, _, p2 = learner.online(v2)
    z1, z2 = learner.target(v1), learner.target(v2)
    expected = (byol_loss(p1, z2) + byol_loss(p2, z1)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert 0 <= loss.item() <= 8


def test_no_gradient_reaches_the_target():
    learner = tiny_learner()
    loss = learner(*views())
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in learner.target_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.online_parameters())
    assert learner.predictor[0].weight.grad is not None


def test_target_starts_as_copy_and_ema_update_is_exact():
    learner = tiny_learner()
    for t, o in zip(learner.target_parameters(), learner.online_parameters()):
        assert torch.equal(t, o)
    with torch.no_grad():
        for o in learner.online_parameters():
            o.add_(torch.randn_like(o))
    before_target = [t.clone() for t in learner.target_parameters()]
    online = [o.clone() for o in learner.online_parameters()]
    learner.update_target(0.9)
    for t, t0, o in zip(learner.target_parameters(), before_target, online):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * o, rtol=1e-6, atol=1e-7)
    assert len(before_target) == len(list(learner.online_encoder.parameters())) + len(
        list(learner.online_projector.parameters())
    )


def test_tau_one_freezes_target_and_tau_zero_copies_online():
    learner = tiny_learner()
    with torch.no_grad():
        for o in learner.online_parameters():
            o.mul_(2).add_(1)
    frozen = [t.clone() for t in learner.target_parameters()]
    learner.update_target(1.0)
    assert all(torch.equal(t, f) for t, f in zip(learner.target_parameters(), frozen))
    learner.update_target(0.0)
    assert all(torch.equal(t, o) for t, o in zip(learner.target_parameters(), learner.online_parameters()))


def test_target_batch_norm_keeps_its_own_running_statistics():
    learner = tiny_learner()
    learner.train()
    learner(*views())
    online_bn = learner.online_encoder.bn1
    target_bn = learner.target_encoder.bn1
    # both were updated by their own forward passes (train mode, batch statistics) ...
    assert online_bn.num_batches_tracked.item() == 2 and target_bn.num_batches_tracked.item() == 2
    assert not torch.allclose(target_bn.running_mean, torch.zeros_like(target_bn.running_mean))
    # ... and the EMA moves parameters only, never buffers
    buffers = [b.clone() for b in learner.target_encoder.buffers()]
    with torch.no_grad():
        online_bn.running_mean.add_(5.0)
    learner.update_target(0.5)
    assert all(torch.equal(b, a) for b, a in zip(learner.target_encoder.buffers(), buffers))
