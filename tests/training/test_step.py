"""byol/training/step.py: the step's two halves are the step, and the first adds to the gradients it finds, as
graphs.GraphedStep (which replays the first half and runs the second eagerly) relies on."""

import copy

import torch

from byol import BYOL, LARS, BYOLAugment, build_backbone, lars_param_groups
from byol.training.step import apply_gradients, forward_backward, training_step


def parts():
    torch.manual_seed(0)
    learner = BYOL(
        build_backbone("resnet18", 0.125, 16, 3), projection_dim=16, projector_hidden_dim=32, predictor_hidden_dim=32
    )
    optimizer = LARS(lars_param_groups(learner, 1e-6), lr=0.2)
    return learner, optimizer, BYOLAugment(16, (0.5,) * 3, (0.25,) * 3), torch.amp.GradScaler("cpu", enabled=False)


def test_the_two_halves_are_the_step_to_the_bit():
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    learner, optimizer, augment, scaler = parts()
    halves_learner = copy.deepcopy(learner)
    halves_optimizer = LARS(lars_param_groups(halves_learner, 1e-6), lr=0.2)
    for step in range(3):
        torch.manual_seed(step)
        loss, _ = training_step(learner, augment, optimizer, scaler, images, 0.9)
        torch.manual_seed(step)
        halves_optimizer.zero_grad(set_to_none=True)
        halves_loss, _ = forward_backward(halves_learner, augment, scaler, images)
        apply_gradients(halves_learner, halves_optimizer, scaler, 0.9)
        assert torch.equal(loss, halves_loss)
    for (name, a), b in zip(learner.state_dict().items(), halves_learner.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_forward_backward_adds_to_the_gradients_it_finds():
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    learner, _, augment, scaler = parts()
    torch.manual_seed(1)
    forward_backward(learner, augment, scaler, images)
    once = {name: p.grad.clone() for name, p in learner.named_parameters() if p.grad is not None}
    torch.manual_seed(1)
    forward_backward(learner, augment, scaler, images)  # the same views and batch statistics again
    assert once and all(torch.equal(p.grad, 2 * once[name]) for name, p in learner.named_parameters() if name in once)
