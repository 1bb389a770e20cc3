"""Each ablation switch and baseline does what it claims (the paper's ablations, docs/method.md)."""

import copy

import pytest
import torch
from torch import nn

from byol import BYOL, SimCLR, SimSiam, build_method, byol_loss, target_tau
from byol.models.norm import WSConv2d, WSLinear
from tests.conftest import tiny_resnet


def backbone(norm="batch"):
    return tiny_resnet(in_channels=3, norm=norm)


def views(batch=6, size=16):
    torch.manual_seed(3)
    return torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)


def sgd_step(learner, tau):
    optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.5)
    learner(*views()).backward()
    optimizer.step()
    learner.update_target(tau)


def test_no_predictor_has_no_predictor_parameters_and_regresses_the_projection():
    learner = build_method("byol", backbone(), 64, projection_dim=8, projector_hidden_dim=16, predictor=False)
    assert isinstance(learner.predictor, nn.Identity) and not list(learner.predictor.parameters())
    v1, v2 = views()
    loss = learner(v1, v2)
    _, g1, p1 = learner.online(v1)
    assert torch.equal(g1, p1)
    assert loss.item() >= 0


def test_tau_zero_makes_the_target_the_online_network():
    learner = build_method("byol", backbone(), 64, projection_dim=8, projector_hidden_dim=16, predictor_hidden_dim=16)
    for step in range(3):
        sgd_step(learner, target_tau(step, 10, base_tau=0.0))
        for online, target in zip(learner.online_parameters(), learner.target_parameters()):
            assert torch.equal(online, target)
    assert target_tau(9, 10, base_tau=0.0) == 0.0  # held, not scheduled up to 1


def test_tau_one_keeps_the_initial_random_target():
    learner = build_method("byol", backbone(), 64, projection_dim=8, projector_hidden_dim=16, predictor_hidden_dim=16)
    initial = [p.clone() for p in learner.target_parameters()]
    for step in range(3):
        sgd_step(learner, target_tau(step, 10, base_tau=1.0))
    assert all(torch.equal(a, b) for a, b in zip(initial, learner.target_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(initial, learner.online_parameters()))


def test_negatives_beta_adds_the_appendix_term_and_zero_is_byol():
    from byol import negatives_term

    learner = build_method(
        "byol",
        backbone(),
        64,
        projection_dim=8,
        projector_hidden_dim=16,
        predictor_hidden_dim=16,
        negatives_beta=1.0,
        negatives_temperature=0.2,
    )
    state = copy.deepcopy(learner.state_dict())
    v1, v2 = views()
    with_negatives = learner(v1, v2)
    learner.load_state_dict(state)
    _, _, p1 = learner.online(v1)
    _, _, p2 = learner.online(v2)
    z1, z2 = learner.target(v1), learner.target(v2)
    plain = (byol_loss(p1, z2) + byol_loss(p2, z1)).mean()
    extra = (negatives_term(p1, z1, z2, 0.2) + negatives_term(p2, z2, z1, 0.2)).mean()
    assert torch.allclose(with_negatives, plain + extra, atol=1e-5)
    assert extra.abs() > 1e-3


def test_group_ws_replaces_every_batch_norm_in_encoder_and_heads():
    learner = build_method(
        "byol",
        backbone("group-ws"),
        64,
        projection_dim=8,
        projector_hidden_dim=16,
        predictor_hidden_dim=16,
        norm="group-ws",
    )
    kinds = {type(m) for m in learner.modules()}
    assert nn.BatchNorm2d not in kinds and nn.BatchNorm1d not in kinds
    assert nn.GroupNorm in kinds and WSLinear in kinds
    convs = [m for m in learner.online_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, WSConv2d) for m in convs)
    # A standardised conv ignores the scale and offset of its weight.
    conv = convs[0]
    x = torch.randn(2, conv.in_channels, 8, 8)
    before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(3).add_(0.5)
    assert torch.allclose(before, conv(x), rtol=1e-3, atol=1e-3)  # up to the eps under the variance
    # Batch-independent: one image's output does not depend on the rest of the batch.
    learner.eval()
    v1, _ = views()
    alone = learner.online_encoder(v1[:1])
    assert torch.allclose(alone, learner.online_encoder(v1)[:1], atol=1e-5)


def test_simclr_has_no_target_or_predictor_and_its_loss_is_nt_xent():
    from byol import nt_xent_loss

    learner = SimCLR(backbone(), 64, projection_dim=8, projector_hidden_dim=16, temperature=0.5)
    names = [name for name, _ in learner.named_parameters()]
    assert not any(n.startswith(("target", "predictor")) for n in names)
    v1, v2 = views()
    loss, outputs = learner(v1, v2, return_outputs=True)
    assert torch.allclose(loss, nt_xent_loss(*outputs.projections, 0.5), atol=1e-6)


def test_simsiam_targets_are_its_own_detached_projections():
    learner = SimSiam(backbone(), 64, projection_dim=8, projector_hidden_dim=16, predictor_hidden_dim=16)
    assert not any(n.startswith("target") for n, _ in learner.named_parameters())
    v1, v2 = views()
    loss, (_, (g1, g2)) = learner(v1, v2, return_outputs=True)
    p1, p2 = learner.predictor(g1), learner.predictor(g2)
    cos = torch.nn.functional.cosine_similarity
    assert torch.allclose(loss, -0.5 * (cos(p1, g2, dim=-1) + cos(p2, g1, dim=-1)).mean(), atol=1e-5)
    loss.backward()
    assert learner.predictor[0].weight.grad is not None


def test_byol_outputs_expose_online_projections_not_predictions():
    learner = BYOL(backbone(), 64, projection_dim=8, projector_hidden_dim=16, predictor_hidden_dim=16)
    v1, v2 = views()
    _, outputs = learner(v1, v2, return_outputs=True)
    assert outputs.representations[0].shape == (6, 64) and outputs.projections[0].shape == (6, 8)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="simclr"):
        build_method("moco", backbone(), 64)
