"""MoCo v2, SwAV, DINO, Barlow Twins and VICReg: the state each keeps, its schedules, multi-crop, and the
learner surface they share with BYOL (byol/methods/, docs/methods.md)."""

import math

import pytest
import torch
from torch import nn

from byol import DINO, BarlowTwins, MoCo, SwAV, VICReg, build_method
from byol.data.augment import MultiCropAugment
from tests.conftest import tiny_resnet


def backbone():
    return tiny_resnet()


def crops(batch=8, local=0, seed=3):
    generator = torch.Generator().manual_seed(seed)
    views = [torch.randn(batch, 3, 16, 16, generator=generator) for _ in range(2)]
    return views + [torch.randn(batch, 3, 8, 8, generator=generator) for _ in range(local)]


def step(learner, views, lr=0.1):
    optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=lr)
    loss = learner(*views)
    optimizer.zero_grad()
    loss.backward()
    learner.before_optimizer_step()
    optimizer.step()
    learner.update_target(0.99)
    return loss


SMALL = {
    "mocov2": dict(projection_dim=16, projector_hidden_dim=32, queue_size=32),
    "swav": dict(projection_dim=16, projector_hidden_dim=32, prototypes=20),
    "dino": dict(bottleneck_dim=16, projector_hidden_dim=32, prototypes=40),
    "barlowtwins": dict(projection_dim=32, projector_hidden_dim=32),
    "vicreg": dict(projection_dim=32, projector_hidden_dim=32),
}


@pytest.mark.parametrize("method", list(SMALL))
def test_every_method_learns_through_the_shared_surface(method):
    torch.manual_seed(0)
    learner = build_method(method, backbone(), 64, **SMALL[method])
    local = 2 if learner.accepts_local_views else 0
    learner.set_progress(0, 0.0)
    loss, outputs = learner(*crops(local=local), return_outputs=True)
    assert torch.isfinite(loss) and outputs.representations[0].shape == (8, 64)
    before = [p.detach().clone() for p in learner.online_encoder.parameters()]
    step(learner, crops(local=local))
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.online_encoder.parameters()))
    if not learner.has_target:
        frozen = [p.detach().clone() for p in learner.parameters()]
        learner.update_target(0.5)  # no target: nothing moves
        assert all(torch.equal(a, b) for a, b in zip(frozen, learner.parameters()))


@pytest.mark.parametrize("method", ["byol", "simclr", "simsiam", *SMALL])
def test_clip_grad_reaches_every_method_and_zero_leaves_gradients_alone(method):
    grads = {}
    for clip_grad in (0.0, 0.01):
        torch.manual_seed(0)
        learner = build_method(method, backbone(), 64, **SMALL.get(method, {}), clip_grad=clip_grad)
        learner.set_progress(0, 5.0)  # past any head freezing
        learner(*crops()).backward()
        learner.before_optimizer_step()
        grads[clip_grad] = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
    norms = [g.norm() for g in grads[0.0]]
    assert max(norms) > 0.02  # so the clip has something to do
    assert all(g.norm() <= 0.01 + 1e-6 for g in grads[0.01])  # each parameter's gradient on its own
    for raw, clipped, norm in zip(grads[0.0], grads[0.01], norms):  # the direction is kept
        assert torch.allclose(clipped, raw * min(1.0, 0.01 / (norm.item() + 1e-6)), atol=1e-7)


@pytest.mark.parametrize("method", ["mocov2", "barlowtwins", "vicreg"])
def test_methods_without_multi_crop_refuse_local_views(method):
    learner = build_method(method, backbone(), 64, **SMALL[method])
    with pytest.raises(ValueError, match="local crops"):
        learner(*crops(local=2))


def test_moco_queue_takes_the_keys_and_only_in_training():
    torch.manual_seed(0)
    learner = MoCo(backbone(), 64, projection_dim=16, projector_hidden_dim=32, queue_size=32)
    queue = learner.queue.clone()
    with torch.no_grad():
        learner(*crops())  # a monitor's forward: no enqueue
    assert torch.equal(learner.queue, queue) and int(learner.queue_pointer) == 0
    step(learner, crops())
    assert int(learner.queue_pointer) == 8
    assert torch.allclose(learner.queue[:, :8].norm(dim=0), torch.ones(8)) and torch.equal(
        learner.queue[:, 8:], queue[:, 8:]
    )
    learner.update_target(0.0)
    assert all(torch.equal(k, q) for k, q in zip(learner.target_parameters(), learner.online_parameters()))
    with pytest.raises(ValueError, match="multiple of the global batch"):
        MoCo(backbone(), 64, projection_dim=16, projector_hidden_dim=32, queue_size=12).enqueue(torch.randn(8, 16))


def test_swav_prototypes_are_unit_norm_frozen_then_trained_and_the_queue_waits_until_full():
    torch.manual_seed(0)
    learner = SwAV(
        backbone(),
        64,
        **SMALL["swav"],
        queue_size=16,
        queue_start_epoch=1,
        freeze_head_epochs=1,
    )
    learner.set_progress(0, 0.5)
    step(learner, crops(local=2))
    assert torch.allclose(learner.prototypes.weight.norm(dim=1), torch.ones(20), atol=1e-6)
    frozen = learner.prototypes.weight.detach().clone()
    step(learner, crops(local=2))
    assert torch.allclose(learner.prototypes.weight, frozen, atol=1e-6)  # normalised, not trained (epoch < 1)
    assert learner.queue is None  # the queue starts at epoch 1
    learner.set_progress(10, 1.0)
    step(learner, crops(local=2))
    assert not torch.allclose(learner.prototypes.weight, frozen, atol=1e-4)  # trained after the freeze
    assert learner.queue.shape == (2, 16, 16) and learner.queued == 8  # half full: not yet used
    with torch.no_grad():
        learner(*crops(local=2))
    assert learner.queued == 8  # a no-grad forward leaves the queue alone
    step(learner, crops(local=2, seed=4))
    assert learner.queued == 16


def test_swav_queue_is_saved_and_comes_back_only_to_a_run_of_as_many_processes():
    def swav():
        torch.manual_seed(0)
        return SwAV(
            backbone(),
            64,
            projection_dim=16,
            projector_hidden_dim=32,
            prototypes=20,
            queue_size=16,
            queue_start_epoch=0,
        )

    learner = swav()
    learner.set_progress(0, 0.0)
    step(learner, crops())
    state = learner.state_dict()
    resumed = swav()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.queue, learner.queue) and resumed.queued == learner.queued == 8
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    assert "queue" not in dict(resumed.named_buffers())  # DDP broadcasts buffers from rank 0; a queue is per rank
    assert resumed.double().queue.dtype == torch.float64  # yet it moves and casts with the module
    two_ranks = {**state, "queue": state["queue"].expand(2, -1, -1, -1)}  # a two-process run's queues, in one
    older = {k: v for k, v in state.items() if not k.startswith("queue")}  # a checkpoint from before
    for saved in (two_ranks, older):
        resumed = swav()
        resumed.load_state_dict(saved)
        assert resumed.queue is None and resumed.queued == 0


def test_dino_centre_teacher_temperature_freeze_and_clipping():
    torch.manual_seed(0)
    learner = DINO(
        backbone(),
        64,
        **SMALL["dino"],
        teacher_temperature=0.07,
        teacher_temperature_start=0.04,
        teacher_temperature_epochs=4,
        clip_grad=0.01,
        freeze_head_epochs=1,
    )
    learner.set_progress(0, 0.5)
    views = crops(local=2)
    with torch.no_grad():
        teacher = learner.target_projector(learner.target_encoder(torch.cat(views[:2])))
    learner(*views).backward()
    assert torch.allclose(learner.center, 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)  # from 0, momentum 0.9
    learner.before_optimizer_step()
    assert all(p.grad is None for p in learner.online_projector.last_layer.parameters())  # frozen in epoch 0
    norms = [p.grad.norm() for p in learner.online_parameters() if p.grad is not None]
    assert max(norms) <= 0.01 + 1e-6  # each parameter's gradient clipped on its own
    temperatures = []
    for epoch in (0.0, 0.9, 1.0, 2.5, 3.0, 7.0):
        learner.set_progress(0, epoch)
        temperatures.append(learner.teacher_temperature())
    assert temperatures == pytest.approx([0.04, 0.04, 0.05, 0.06, 0.07, 0.07])  # steps at epoch boundaries


@pytest.mark.parametrize("cls", [BarlowTwins, VICReg])
def test_redundancy_reduction_heads_have_the_official_shape(cls):
    learner = cls(backbone(), 64, projection_dim=32, projector_hidden_dim=48)
    linears = [m for m in learner.online_projector if isinstance(m, nn.Linear)]
    norms = [m for m in learner.online_projector if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 48), (48, 48), (48, 32)]
    assert len(norms) == 2 and linears[-1].bias is None
    assert (linears[0].bias is not None) == (cls is VICReg)  # Barlow Twins' hidden layers have no bias


def test_constant_outputs_are_the_collapse_signatures():
    from byol import dino_loss, swav_loss

    assert swav_loss([torch.zeros(4, 30)] * 3).item() == pytest.approx(math.log(30), rel=1e-5)
    assert dino_loss([torch.zeros(4, 50)] * 3, [torch.zeros(4, 50)] * 2, torch.zeros(1, 50)).item() == pytest.approx(
        math.log(50), rel=1e-5
    )


class CountingEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls, self.linear = [], nn.Linear(3, 64)

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.linear(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("cls", [SwAV, DINO])
def test_multi_crop_runs_each_resolution_through_the_encoder_once(cls):
    encoder = CountingEncoder()
    head_size = {"bottleneck_dim" if cls is DINO else "projection_dim": 16}
    learner = cls(encoder, 64, **head_size, projector_hidden_dim=32, prototypes=20)
    augment = MultiCropAugment(16, (0.5,) * 3, (0.25,) * 3, local_crops=3, local_size=8)
    views = augment(torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 3
    learner(*views)
    assert encoder.calls[:2] == [(8, 3, 16, 16), (12, 3, 8, 8)]  # the student: 2 global together, 3 local together


class ConstantEncoder(nn.Module):
    """Every image to the same features: a collapsed encoder."""

    def __init__(self):
        super().__init__()
        self.features = nn.Parameter(torch.randn(64))

    def forward(self, x):
        return self.features.expand(len(x), -1)


@pytest.mark.parametrize("method", list(SMALL))
def test_the_collapse_monitor_flags_a_collapsed_encoder_for_every_method(method):
    from byol.probes.collapse import collapse_metrics, is_collapsed

    learner = build_method(method, ConstantEncoder(), 64, **SMALL[method])
    local = 2 if learner.accepts_local_views else 0
    learner.eval()  # the constant features' batch statistics are zero: eval-mode BN keeps the heads finite
    _, outputs = learner(*crops(local=local), return_outputs=True)
    metrics = collapse_metrics(outputs.projections[0], outputs.representations[0])
    assert is_collapsed(metrics, metrics["embedding_dim"])
    healthy = build_method(method, backbone(), 64, **SMALL[method])
    _, outputs = healthy(*crops(local=local), return_outputs=True)
    metrics = collapse_metrics(outputs.projections[0], outputs.representations[0])
    assert not is_collapsed(metrics, metrics["embedding_dim"])


@pytest.mark.parametrize("method", list(SMALL))
def test_build_method_finds_the_feature_size_as_byol_does(method):
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # declares nothing: a dry run
    learner = build_method(method, encoder, **SMALL[method])
    assert torch.isfinite(learner(*crops(local=2 if method in ("swav", "dino") else 0)))
