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


def test_nt_xent_equals_a_direct_loop():
    from byol import nt_xent_loss

    torch.manual_seed(0)
    z1, z2, t = torch.randn(5, 4), torch.randn(5, 4), 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(10):
        positive = (i + 5) % 10
        sims = [torch.exp(z[i] @ z[k] / t) for k in range(10) if k != i]
        total += -torch.log(torch.exp(z[i] @ z[positive] / t) / sum(sims))
    assert torch.allclose(nt_xent_loss(z1, z2, t), total / 10, atol=1e-5)


def test_negatives_term_equals_a_direct_loop():
    from byol import negatives_term

    torch.manual_seed(1)
    p, za, zb, alpha = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), 0.5

    def cos(a, b):
        return F.cosine_similarity(a, b, dim=0)

    for i in range(4):
        inner = sum(torch.exp(cos(p[i], za[j]) / alpha) for j in range(4) if j != i)
        inner = inner + sum(torch.exp(cos(p[i], zb[j]) / alpha) for j in range(4))
        assert torch.allclose(negatives_term(p, za, zb, alpha)[i], 2 * alpha * torch.log(inner), atol=1e-5)
