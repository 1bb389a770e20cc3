import pytest
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


# ---------------------------------------------------------------- the methods beside BYOL: each against its formula


def test_moco_loss_equals_the_infonce_formula_by_hand():
    from byol import moco_loss

    torch.manual_seed(1)
    q, k, queue, t = torch.randn(4, 8), torch.randn(4, 8), F.normalize(torch.randn(8, 10), dim=0), 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    expected = []
    for i in range(4):
        positive = torch.exp(qn[i] @ kn[i] / t)
        negatives = sum(torch.exp(qn[i] @ queue[:, j] / t) for j in range(10))
        expected.append(-torch.log(positive / (positive + negatives)))
    assert torch.allclose(moco_loss(q, k, queue, t), torch.stack(expected).mean(), atol=1e-5)


def test_barlow_twins_loss_equals_the_cross_correlation_formula_by_hand():
    from byol import barlow_twins_loss

    torch.manual_seed(2)
    z1, z2, lam = torch.randn(16, 5), torch.randn(16, 5) + 1.0, 0.01
    n1 = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    n2 = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    expected = 0.0
    for i in range(5):
        for j in range(5):
            c = sum(n1[b, i] * n2[b, j] for b in range(16)) / 16
            expected += (1 - c) ** 2 if i == j else lam * c**2
    assert torch.allclose(barlow_twins_loss(z1, z2, lam), expected, rtol=1e-5)


def test_vicreg_loss_equals_its_three_terms_by_hand():
    from byol import vicreg_loss

    torch.manual_seed(3)
    z1, z2 = torch.randn(12, 6), torch.randn(12, 6) * 0.3
    invariance = ((z1 - z2) ** 2).mean()
    variance = covariance = 0.0
    for z in (z1, z2):
        centred = z - z.mean(0)
        std = torch.sqrt(centred.var(0) + 1e-4)
        variance += torch.clamp(1 - std, min=0).mean() / 2
        cov = centred.T @ centred / 11
        covariance += sum(cov[i, j] ** 2 for i in range(6) for j in range(6) if i != j) / 6
    expected = 25 * invariance + 25 * variance + 1 * covariance
    assert torch.allclose(vicreg_loss(z1, z2, 25, 25, 1), expected, rtol=1e-5)


def sinkhorn_by_hand(scores, epsilon, iterations):
    """The official distributed_sinkhorn in one process, written out with numpy."""
    import numpy as np

    q = np.exp(scores.double().numpy() / epsilon).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return torch.from_numpy((q * b).T)


def test_sinkhorn_equals_the_official_algorithm_and_equipartitions():
    from byol import sinkhorn

    torch.manual_seed(4)
    scores = F.normalize(torch.randn(24, 4), dim=1) @ F.normalize(torch.randn(6, 4), dim=1).T
    codes = sinkhorn(scores, 0.05, 3)
    assert torch.allclose(codes.double(), sinkhorn_by_hand(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
    assert torch.allclose(codes.sum(dim=1), torch.ones(24), atol=1e-5)  # each sample's codes sum to 1
    many = sinkhorn(scores, 0.05, 200)
    assert torch.allclose(many.sum(dim=0), torch.full((6,), 24 / 6), rtol=1e-2)  # prototypes share the batch


def test_swav_loss_is_the_swapped_prediction_by_hand_and_collapse_gives_ln_prototypes():
    import math

    from byol import sinkhorn, swav_loss

    torch.manual_seed(5)
    crops = [torch.randn(8, 7) * 0.5 for _ in range(4)]  # 2 global + 2 local crops' scores
    expected = 0.0
    for i in range(2):
        q = sinkhorn(crops[i], 0.05, 3)
        others = [v for v in range(4) if v != i]
        expected += sum(-(q * F.log_softmax(crops[v] / 0.1, dim=1)).sum(1).mean() for v in others) / len(others)
    assert torch.allclose(swav_loss(crops, 2, 0.1, 0.05, 3), expected / 2, atol=1e-5)
    constant = [torch.full((8, 7), 0.3) for _ in range(4)]  # every image, every crop, the same scores
    assert swav_loss(constant, 2, 0.1, 0.05, 3).item() == pytest.approx(math.log(7), rel=1e-5)


def test_dino_loss_averages_every_teacher_global_against_every_other_crop_and_collapse_gives_ln_out_dim():
    import math

    from byol import dino_loss

    torch.manual_seed(6)
    student = [torch.randn(5, 9) for _ in range(2 + 3)]  # 2 global + 3 local
    teacher = [torch.randn(5, 9) for _ in range(2)]
    center = torch.randn(1, 9) * 0.1
    terms = []
    for iq in range(2):
        target = F.softmax((teacher[iq] - center) / 0.04, dim=1)
        for v in range(5):
            if v != iq:
                terms.append(-(target * F.log_softmax(student[v] / 0.1, dim=1)).sum(1).mean())
    assert len(terms) == 2 * (2 + 3) - 2
    assert torch.allclose(dino_loss(student, teacher, center, 0.1, 0.04), sum(terms) / len(terms), atol=1e-5)
    flat = [torch.zeros(5, 9) for _ in range(5)]
    assert dino_loss(flat, flat[:2], torch.zeros(1, 9), 0.1, 0.04).item() == pytest.approx(math.log(9), rel=1e-5)
