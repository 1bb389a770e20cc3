"""The public API fits together in a user's own loop at toy size: the target moves, the encoder is the backbone."""

import torch

import byol


def test_readme_training_loop_runs_and_moves_the_target():
    backbone = byol.build_backbone("resnet18", width=0.125, image_size=32)
    learner = byol.BYOL(backbone, projector_hidden_dim=64, predictor_hidden_dim=64, projection_dim=32)
    augment = byol.BYOLAugment(32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    optimizer = byol.LARS(byol.lars_param_groups(learner, weight_decay=1.5e-6), lr=0.0)
    target_before = [p.clone() for p in learner.target_parameters()]
    batches = [torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8) for _ in range(3)]
    total_steps, warmup_steps, batch_size = len(batches), 1, 8
    losses = []
    for step, images in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = byol.learning_rate(step, total_steps, warmup_steps, byol.scaled_lr(0.2, batch_size))
        loss = learner(*augment(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_target(byol.target_tau(step, total_steps, base_tau=0.996))
        losses.append(loss.item())
    assert all(0 <= value <= 8 for value in losses)
    assert any(not torch.equal(a, b) for a, b in zip(target_before, learner.target_parameters()))
    assert learner.online_encoder is backbone
