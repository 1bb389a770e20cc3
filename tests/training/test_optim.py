import torch
from torch import nn

from byol import LARS, lars_param_groups
from tests.conftest import tiny_resnet


def small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_groups_exclude_biases_and_norm_parameters():
    net = small_net()
    adapted, excluded = lars_param_groups(net, weight_decay=1e-4)

    def ids(ps):
        return {id(p) for p in ps}

    assert ids(adapted["params"]) == {id(net[0].weight), id(net[3].weight)}
    assert ids(excluded["params"]) == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert excluded["weight_decay"] == 0 and excluded["lars_exclude"]
    assert adapted["weight_decay"] == 1e-4 and not adapted["lars_exclude"]


def test_groups_skip_frozen_parameters():
    net = small_net()
    net[3].weight.requires_grad_(False)
    groups = lars_param_groups(net, 0.0)
    assert all(p is not net[3].weight for g in groups for p in g["params"])


def test_adapted_step_matches_formula():
    w = nn.Parameter(torch.randn(8, 3))
    g = torch.randn(8, 3)
    w0 = w.detach().clone()
    opt = LARS(
        [{"params": [w], "weight_decay": 0.1, "lars_exclude": False}], lr=0.5, momentum=0.9, trust_coefficient=1e-3
    )
    w.grad = g.clone()
    opt.step()
    decayed = g + 0.1 * w0
    trust = 1e-3 * w0.norm() / decayed.norm()
    assert torch.allclose(w.detach(), w0 - 0.5 * trust * decayed, atol=1e-7)
    # second step: momentum carries the first update
    w1 = w.detach().clone()
    w.grad = g.clone()
    opt.step()
    decayed2 = g + 0.1 * w1
    v = 0.9 * (0.5 * trust * decayed) + 0.5 * (1e-3 * w1.norm() / decayed2.norm()) * decayed2
    assert torch.allclose(w.detach(), w1 - v, atol=1e-7)


def test_excluded_parameters_get_plain_momentum_sgd_without_decay():
    b = nn.Parameter(torch.randn(7))
    g = torch.randn(7)
    b0 = b.detach().clone()
    opt = LARS([{"params": [b], "weight_decay": 0.0, "lars_exclude": True}], lr=0.5, weight_decay=0.1)
    b.grad = g.clone()
    opt.step()
    assert torch.allclose(b.detach(), b0 - 0.5 * g, atol=1e-7)


def test_zero_weights_use_trust_one():
    w = nn.Parameter(torch.zeros(4, 4))
    opt = LARS([w], lr=1.0, momentum=0.0)
    w.grad = torch.ones(4, 4)
    opt.step()
    assert torch.allclose(w.detach(), -torch.ones(4, 4))


def per_parameter_lars_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    exclude: bool,
) -> None:
    """LARS written out one parameter at a time (the optimizer's previous form), as the reference."""
    if not exclude:
        grad = grad.add(param, alpha=weight_decay)
        param_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
        trust = torch.where(
            (param_norm > 0) & (grad_norm > 0), trust_coefficient * param_norm / grad_norm, torch.ones_like(param_norm)
        )
        grad = grad * trust
    buf.mul_(momentum).add_(grad, alpha=lr)
    param.sub_(buf)


def test_multi_tensor_lars_equals_the_per_parameter_form_with_the_same_exclusions():
    from byol import BYOL

    torch.manual_seed(0)
    learner = BYOL(
        tiny_resnet(),
        projection_dim=8,
        projector_hidden_dim=16,
        predictor_hidden_dim=16,
    )
    groups = lars_param_groups(learner, weight_decay=1e-3)
    optimizer = LARS(groups, lr=0.3, momentum=0.9, trust_coefficient=1e-3)
    reference = {p: (p.detach().clone(), torch.zeros_like(p)) for g in groups for p in g["params"]}
    for step in range(3):
        for param in reference:
            param.grad = torch.randn_like(param) * (step + 1)
        with torch.no_grad():
            for group in groups:
                for param in group["params"]:
                    ref, buf = reference[param]
                    per_parameter_lars_step(
                        ref, param.grad, buf, 0.3, 0.9, group["weight_decay"], 1e-3, group["lars_exclude"]
                    )
        optimizer.step()
        for param, (ref, _) in reference.items():
            torch.testing.assert_close(param.detach(), ref, rtol=1e-6, atol=1e-7)
    some_grad_missing = next(iter(reference))
    some_grad_missing.grad = None  # a parameter without a gradient is left alone, as before
    before = some_grad_missing.detach().clone()
    optimizer.step()
    assert torch.equal(some_grad_missing.detach(), before)


def test_clip_lr_caps_each_layers_effective_lr_at_the_global_one():
    w = nn.Parameter(torch.full((4, 4), 10.0))
    w0 = w.detach().clone()
    opt = LARS([w], lr=0.1, momentum=0.0, trust_coefficient=1.0, clip_lr=True)
    w.grad = torch.full((4, 4), 0.01)  # trust = ‖w‖/‖g‖ = 1000 ≫ 1/lr: capped at lr, i.e. a plain SGD step
    opt.step()
    assert torch.allclose(w.detach(), w0 - 0.1 * 0.01)
    small = nn.Parameter(torch.full((4, 4), 1e-3))
    opt = LARS([small], lr=0.1, momentum=0.0, trust_coefficient=1e-3, clip_lr=True)
    small.grad = torch.ones(4, 4)  # trust = 1e-6 < lr: the layer's own, smaller rate
    opt.step()
    assert torch.allclose(small.detach(), torch.full((4, 4), 1e-3 - 1e-6 * 0.1 / 0.1))


def test_groups_carry_their_lr_multiplier():
    adapted, excluded = lars_param_groups(small_net(), 1e-4, excluded_lr_multiplier=0.024)
    assert adapted["lr_multiplier"] == 1.0 and excluded["lr_multiplier"] == 0.024
