import copy

import pytest
import torch

from byol import BYOL, LARS, BYOLAugment, build_backbone, lars_param_groups
from byol import bench as bench_module
from byol.bench import bench, best_rate, count_flops, peak_flops
from byol.runtime.errors import UserError
from byol.training.trainer import training_step

TINY = dict(
    backbone="resnet18", width=0.125, image_size=16, batch_size=8, steps=2, warmup=1, device="cpu", precision="fp32"
)


def test_bench_runs_end_to_end_and_reports_its_fields():
    result = bench(**TINY)
    for key in (
        "images_per_s",
        "ms_per_step",
        "flops_per_image",
        "achieved_flops",
        "peak_flops",
        "utilization",
        "augment_ms_per_step",
        "peak_rss_mb",
        "compare",
    ):
        assert key in result, key
    assert result["images_per_s"] > 0 and result["utilization"] > 0
    assert result["images_per_s"] == pytest.approx(8 / (result["ms_per_step"] / 1000))
    assert result["precision"] == "float32" and result["precision_choice"] == "fp32"


def test_flop_count_is_about_eight_forward_passes_per_image():
    encoder = build_backbone("resnet18", 0.125, 16, 3)
    heads = BYOL(encoder, encoder.feature_dim)  # the paper-size heads bench uses
    x = torch.randn(8, 3, 16, 16)
    e = count_flops(lambda: encoder(x)) / 8
    p = count_flops(lambda: heads.online_projector(torch.randn(8, encoder.feature_dim))) / 8
    q = count_flops(lambda: heads.predictor(torch.randn(8, 256))) / 8
    # online forward + backward (≈ 3 forwards) on 2 views, target forward on 2 views; the first
    # conv's input gradient is never computed, so the count sits a little under this.
    expected = 6 * (e + p + q) + 2 * (e + p)
    per_image = bench(**TINY)["flops_per_image"]
    assert 0.85 * expected < per_image <= expected


def test_missing_peer_is_reported_as_skipped(monkeypatch):
    from byol import peers

    def not_installed(*args, **kwargs):
        raise ImportError("No module named 'byol_pytorch'", name="byol_pytorch")

    monkeypatch.setitem(peers.STEPS, "byol-pytorch", not_installed)
    result = bench(**TINY, compare=("byol-pytorch",))
    assert "skipped" in result["compare"]["byol-pytorch"]
    with pytest.raises(UserError, match="--compare"):
        bench(**TINY, compare=("simclr-lib",))


def test_optimised_step_matches_the_plain_reference_step():
    """training_step (channels_last) against a step written out by hand in fp32, contiguous."""
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", 0.125, 16, 3)
    learner = BYOL(encoder, encoder.feature_dim, projection_dim=16, projector_hidden_dim=32, predictor_hidden_dim=32)
    reference = copy.deepcopy(learner)
    fast = learner.to(memory_format=torch.channels_last)
    augment = BYOLAugment(16, (0.5,) * 3, (0.25,) * 3)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    optimizers = [LARS(lars_param_groups(m, 1e-4), lr=0.5, momentum=0.9) for m in (fast, reference)]

    torch.manual_seed(1)
    loss_fast, _ = training_step(
        fast, augment, optimizers[0], torch.amp.GradScaler("cpu", enabled=False), images, 0.9, torch.channels_last
    )
    torch.manual_seed(1)
    view1, view2 = augment(images)
    loss_ref = reference(view1, view2)
    optimizers[1].zero_grad()
    loss_ref.backward()
    optimizers[1].step()
    reference.update_target(0.9)

    assert torch.allclose(loss_fast, loss_ref, atol=1e-5)
    for (name, a), b in zip(fast.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step():
    """--compile must not change the maths (minutes of compilation on a CPU, hence slow)."""
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", 0.125, 16, 3)
    eager = BYOL(encoder, encoder.feature_dim, projection_dim=16, projector_hidden_dim=32, predictor_hidden_dim=32)
    compiled = copy.deepcopy(eager)
    compiled.compile()
    augment = BYOLAugment(16, (0.5,) * 3, (0.25,) * 3)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    losses, models = [], (eager, compiled)
    for model in models:
        optimizer = LARS(lars_param_groups(model, 1e-4), lr=0.5, momentum=0.9)
        torch.manual_seed(1)
        loss, _ = training_step(model, augment, optimizer, torch.amp.GradScaler("cpu", enabled=False), images, 0.9)
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], atol=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-4), name


def test_best_rate_counts_calls_over_one_synchronised_run(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench_module.time, "perf_counter", lambda: clock[0])

    def quarter_second():
        clock[0] += 0.25

    # one untimed call, one to calibrate (0.25 s → 4 calls per 1-s run), three runs: 4 × 100 FLOP per second
    assert best_rate(quarter_second, 100, torch.device("cpu"), seconds=3.0) == pytest.approx(400)


def test_the_peak_is_the_best_of_matmuls_and_convolutions_and_never_silently_exceeded(monkeypatch):
    rate, kind = peak_flops(torch.device("cpu"), torch.float32, seconds=0.2)
    assert rate > 0 and kind.startswith(("matmul", "conv3x3"))
    monkeypatch.setattr(bench_module, "peak_flops", lambda device, dtype: (1.0, "a tiny made-up peak"))
    result = bench(**TINY)
    assert result["utilization"] > 1 and "above 100%" in result["utilization_note"]
    assert "above 100%" in bench_module.format_result(result)
    assert "model        resnet18 ×0.125," in bench_module.format_result(result)
    named = bench_module.format_result({**result, "backbone": "torchvision:resnet18", "width": 1.0})
    assert "model        torchvision:resnet18, " in named  # no width: --width does not apply to library models
