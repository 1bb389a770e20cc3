"""The target network is written once (MomentumLearner), and every learner keeps the parameter names, shapes
and initial values its checkpoints were written with (tests/fixtures/learner_state.json, recorded before the
target and the heads were shared)."""

import json
from pathlib import Path

import pytest
import torch

from byol import BYOL, DINO, MoCo
from byol.methods import build_method
from byol.methods.learner import MomentumLearner
from tests.conftest import tiny_resnet

RECORDED = json.loads((Path(__file__).parents[1] / "fixtures" / "learner_state.json").read_text())
SMALL = {
    "mocov2": dict(projection_dim=16, projector_hidden_dim=32, queue_size=32),
    "swav": dict(projection_dim=16, projector_hidden_dim=32, prototypes=20),
    "dino": dict(bottleneck_dim=16, projector_hidden_dim=32, prototypes=40),
    "barlowtwins": dict(projection_dim=32, projector_hidden_dim=32),
    "vicreg": dict(projection_dim=32, projector_hidden_dim=32),
    "byol": dict(projection_dim=16, projector_hidden_dim=32, predictor_hidden_dim=32),
    "simclr": dict(projection_dim=16, projector_hidden_dim=32),
    "simsiam": dict(projection_dim=16, projector_hidden_dim=32, predictor_hidden_dim=32),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_parameter_names_shapes_and_initial_values_are_those_checkpoints_hold(name):
    method, norm = name.split("-", 1)
    options = {**SMALL[method], **({"norm": norm} if norm != "batch" else {})}
    torch.manual_seed(0)
    learner = build_method(method, tiny_resnet(norm=norm), **options)
    state = learner.state_dict()
    assert list(state) == list(RECORDED[name])  # the order too: optimizer state follows parameter order
    for key, (shape, total) in RECORDED[name].items():
        assert list(state[key].shape) == shape, key
        # a float64 sum of the same values: equal up to the summation order of the CPU's vector width
        assert float(state[key].double().sum()) == pytest.approx(total, abs=1e-3), key


@pytest.mark.parametrize("method, cls", [("byol", BYOL), ("mocov2", MoCo), ("dino", DINO)])
def test_momentum_learners_share_one_target_and_one_update(method, cls):
    learner = build_method(method, tiny_resnet(), **SMALL[method])
    assert isinstance(learner, MomentumLearner) and learner.has_target
    assert "update_target" not in vars(cls) and "attach_target" not in vars(cls)
    assert not any(p.requires_grad for p in learner.target_parameters())
    online, target = learner.online_parameters(), learner.target_parameters()
    assert all(torch.equal(o, t) for o, t in zip(online, target))
    with torch.no_grad():
        torch._foreach_add_(online, 1.0)
    learner.update_target(0.75)  # ξ ← 0.75·ξ + 0.25·(ξ + 1) = ξ + 0.25
    before = [o - 1.0 for o in online]
    assert all(torch.allclose(t, b + 0.25, atol=1e-6) for t, b in zip(target, before))
