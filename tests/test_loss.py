import torch
import torch.nn.functional as F

from byol import byol_loss


def test_equals_two_minus_two_cosine():
    p, z = torch.randn(16, 8), torch.randn(16, 8)
    expected = 2 - 2 * F.cosine_similarity(p, z, dim=-1)
    assert torch.allclose(byol_loss(p, z), expected, atol=1e-6)


def test_equals_squared_distance_of_normalised_vectors_and_is_per_sample():
    p, z = torch.randn(5, 3), torch.randn(5, 3)
    expected = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1)
    loss = byol_loss(p, z)
    assert loss.shape == (5,)
    assert torch.allclose(loss, expected, atol=1e-6)


def test_scale_invariant_and_bounded():
    p = torch.randn(4, 6)
    assert torch.allclose(byol_loss(p, 3 * p), torch.zeros(4), atol=1e-6)
    assert torch.allclose(byol_loss(p, -p), torch.full((4,), 4.0), atol=1e-6)


def test_target_is_stop_gradient():
    p = torch.randn(4, 6, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    byol_loss(p, z).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None
