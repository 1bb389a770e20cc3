import dataclasses
import math

import pytest
import torch
import torchvision.transforms.functional as TF

from byol import VIEW1, VIEW2, BYOLAugment, MultiCropAugment, ViewAugment, ViewConfig
from byol.data.augment import (
    _crop_boxes,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    hsv_to_rgb,
    rgb_to_hsv,
)

N = 3000  # images per frequency test: 3.5σ of a p=0.5 frequency is ±0.032
OFF = dict(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip_prob=0.0,
    jitter_prob=0.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
    solarize_prob=0.0,
)


def only(view: ViewConfig, **keep) -> ViewAugment:
    """The view's pipeline with every random operation off except those named in `keep`."""
    settings = {**OFF, **{k: getattr(view, k) for k in keep}}
    return ViewAugment(32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), cfg=dataclasses.replace(view, **settings))


def assert_frequency(observed: torch.Tensor, p: float):
    rate = observed.float().mean().item()
    tolerance = 3.5 * math.sqrt(max(p * (1 - p), 1e-4) / observed.numel())
    assert abs(rate - p) <= tolerance, f"frequency {rate:.4f}, expected {p} ± {tolerance:.4f}"


def colourful(n=N, size=32):
    return torch.rand(n, 3, size, size)


def test_views_match_the_spec_table():
    for view in (VIEW1, VIEW2):
        assert view.crop_scale == (0.08, 1.0) and view.crop_ratio == pytest.approx((3 / 4, 4 / 3))
        assert view.flip_prob == 0.5 and view.jitter_prob == 0.8 and view.grayscale_prob == 0.2
        assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.4, 0.4, 0.2, 0.1)
        assert view.blur_sigma == (0.1, 2.0)
    assert (VIEW1.blur_prob, VIEW1.solarize_prob) == (1.0, 0.0)
    assert (VIEW2.blur_prob, VIEW2.solarize_prob) == (0.1, 0.2)


@pytest.mark.parametrize("view", [VIEW1, VIEW2], ids=["view1", "view2"])
def test_flip_frequency(view):
    x = colourful()
    out = only(view, flip_prob=True)(x)
    unchanged = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-4
    flipped = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert bool((unchanged ^ flipped).all()), "every image is either identical or mirrored"
    assert_frequency(flipped, view.flip_prob)


@pytest.mark.parametrize("view", [VIEW1, VIEW2], ids=["view1", "view2"])
def test_grayscale_frequency(view):
    out = only(view, grayscale_prob=True)(colourful())
    gray = (out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) < 1e-6
    assert_frequency(gray, view.grayscale_prob)


@pytest.mark.parametrize("view", [VIEW1, VIEW2], ids=["view1", "view2"])
def test_colour_jitter_frequency(view):
    x = 0.25 + 0.5 * colourful()  # away from the clip limits so every jitter shows
    out = only(view, jitter_prob=True)(x)
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert_frequency(changed, view.jitter_prob)


@pytest.mark.parametrize("view", [VIEW1, VIEW2], ids=["view1", "view2"])
def test_blur_frequency(view):
    checkerboard = ((torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2).float()
    x = checkerboard.expand(N, 3, 32, 32).contiguous()
    out, params = only(view, blur_prob=True)(x, return_params=True)
    assert_frequency(params["blur"], view.blur_prob)
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert not changed[~params["blur"]].any()
    # σ ~ U(0.1, 2): below σ ≈ 0.25 a 3-tap kernel is numerically an impulse, so a little under
    # p of the images show the blur.
    assert view.blur_prob * 0.8 <= changed.float().mean() <= view.blur_prob


@pytest.mark.parametrize("view", [VIEW1, VIEW2], ids=["view1", "view2"])
def test_solarize_frequency(view):
    x = 0.6 + 0.4 * colourful()  # every pixel ≥ 0.5: solarised ones all drop below 0.5
    out = only(view, solarize_prob=True)(x)
    solarized = out.amax(dim=(1, 2, 3)) <= 0.4 + 1e-6
    assert bool((solarized | (out.amin(dim=(1, 2, 3)) >= 0.6 - 1e-6)).all())
    assert_frequency(solarized, view.solarize_prob)


def test_full_pipeline_reports_spec_frequencies():
    augment = ViewAugment(32, (0.5,) * 3, (0.5,) * 3, VIEW2)
    _, params = augment(colourful(4000), return_params=True)
    for name, p in (("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.1), ("solarize", 0.2)):
        assert_frequency(params[name], p)


def test_crop_boxes_follow_random_resized_crop():
    boxes = _crop_boxes(20000, 28, 28, VIEW1, "cpu")
    x0, y0, w, h = boxes.unbind(1)
    area = w * h / (28 * 28)
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 28 + 1e-4).all() and (y0 + h <= 28 + 1e-4).all()
    ratio = w / h
    whole = area > 1 - 1e-6
    assert ((ratio[~whole] >= 3 / 4 - 1e-4) & (ratio[~whole] <= 4 / 3 + 1e-4)).all()
    # the mean area of an accepted draw from U(0.08, 1) with a few rejections near 1
    assert 0.45 < area.mean().item() < 0.56


def test_copies_of_one_image_get_different_views():
    image = torch.rand(1, 3, 32, 32)
    batch = image.expand(8, 3, 32, 32).contiguous()
    v1, v2 = BYOLAugment(32, (0.5,) * 3, (0.5,) * 3)(batch)
    for view in (v1, v2):
        distinct = {tuple(view[i].flatten()[:50].tolist()) for i in range(8)}
        assert len(distinct) == 8
    assert not torch.allclose(v1, v2)


def test_uint8_and_float_inputs_give_the_same_views():
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    augment = BYOLAugment(32, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    torch.manual_seed(3)
    a1, a2 = augment(images)
    torch.manual_seed(3)
    b1, b2 = augment(images.float() / 255)
    assert a1.shape == (6, 3, 32, 32)
    assert torch.allclose(a1, b1, atol=1e-5) and torch.allclose(a2, b2, atol=1e-5)


def test_float_input_is_not_modified():
    images = torch.rand(4, 3, 32, 32)
    copy = images.clone()
    BYOLAugment(32, (0.5,) * 3, (0.5,) * 3)(images)
    assert torch.equal(images, copy)


def test_grayscale_images_work_and_skip_colour_operations():
    images = torch.randint(0, 256, (500, 1, 28, 28), dtype=torch.uint8)
    augment = ViewAugment(28, (0.286,), (0.353,), VIEW2)
    out, params = augment(images, return_params=True)
    assert out.shape == (500, 1, 28, 28) and torch.isfinite(out).all()
    assert not params["grayscale"].any()
    assert_frequency(params["jitter"], 0.8)


def test_normalisation_uses_the_given_statistics():
    x = torch.full((2, 3, 32, 32), 0.5)
    out = only(VIEW1)(x)
    assert torch.allclose(out, x, atol=1e-6)
    normalised = ViewAugment(32, (0.25, 0.5, 0.75), (0.5, 0.5, 0.25), dataclasses.replace(VIEW1, **OFF))(x)
    assert torch.allclose(normalised[:, :, 0, 0], torch.tensor([[0.5, 0.0, -1.0]] * 2), atol=1e-5)


def test_saturation_matches_the_hsv_definition():
    x = torch.rand(64, 3, 8, 8)
    factor = torch.empty(64).uniform_(0.5, 1.5)
    hsv = rgb_to_hsv(x)
    hsv[:, 1] = (hsv[:, 1] * factor.view(-1, 1, 1)).clamp(0, 1)
    assert torch.allclose(adjust_saturation(x, factor), hsv_to_rgb(hsv), atol=1e-5)


def test_hsv_round_trip_and_hue_matches_torchvision():
    x = torch.rand(16, 3, 8, 8)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    for delta in (-0.1, 0.03, 0.1):
        ours = adjust_hue(x, torch.full((16,), delta))
        assert torch.allclose(ours, TF.adjust_hue(x, delta), atol=1e-4)


def test_contrast_scales_around_each_channels_mean():
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    out = adjust_contrast(x, torch.full((4,), 0.5))
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, (x - mean) * 0.5 + mean, atol=1e-6)


def test_blur_kernel_size_and_sigma_per_image():
    x = torch.zeros(2, 1, 40, 40)
    x[:, :, 20, 20] = 1.0
    out = gaussian_blur(x, torch.tensor([0.1, 2.0]))
    # side 40 → radius 2 (kernel 5); a tiny sigma keeps the impulse, a large one spreads it
    assert out[0, 0, 20, 20] > 0.99
    assert out[1, 0, 20, 20] < 0.1 and out[1, 0, 18:23, 18:23].sum() == pytest.approx(1.0, abs=1e-5)
    assert out[1, 0, 17, 20] == 0.0


def test_aug_remove_all_but_crop_leaves_only_the_crop():
    from byol import without
    from byol.data.augment import REMOVABLE

    removed = without(VIEW2, ["all-but-crop"])
    assert removed.jitter_prob == removed.grayscale_prob == removed.blur_prob == removed.solarize_prob == 0
    assert removed.flip_prob == 0 and removed.crop_scale == VIEW2.crop_scale
    assert (
        without(VIEW1, ["color"]).jitter_prob == 0 and without(VIEW1, ["color"]).grayscale_prob == VIEW1.grayscale_prob
    )
    assert set(REMOVABLE) == {"color", "grayscale", "blur", "solarize", "flip", "all-but-crop"}
    # With the crop pinned to the whole image, nothing else may touch the pixels.
    images = torch.rand(8, 3, 16, 16)
    whole = dataclasses.replace(removed, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = ViewAugment(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), whole)(images)
    assert torch.allclose(out, images, atol=1e-4)


@pytest.mark.parametrize("channels, size, batch", [(3, 32, 64), (1, 28, 128), (3, 96, 12)])
def test_the_sync_free_masking_of_accelerators_gives_the_cpus_bits(channels, size, batch, monkeypatch):
    """On CUDA the augmentation selects with torch.where over the whole batch (no host sync); on the CPU it
    computes only the selected images. Same seed, same random draws, the same output to the bit."""
    from byol.data import augment

    images = torch.randint(0, 256, (batch, channels, size + 4, size + 4), dtype=torch.uint8)
    both = BYOLAugment(size, (0.5,) * channels, (0.25,) * channels)
    views = {}
    for name, apply in (("selected", augment._apply_to_selected), ("where", augment._apply_where)):
        monkeypatch.setattr(augment, "_apply_to", apply)
        torch.manual_seed(3)
        views[name] = both(images)
    for a, b in zip(views["selected"], views["where"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("masking", ["selected", "where"])
@pytest.mark.parametrize("channels, size, batch", [(3, 32, 64), (1, 28, 128), (3, 96, 12)])
def test_views_computed_together_get_the_bits_each_gets_alone(channels, size, batch, masking, monkeypatch):
    """BYOLAugment and MultiCropAugment push same-sized views through the pipeline as one batch; each view
    must come out as it does from its own ViewAugment after the same seed: same draws, same order, same bits."""
    from byol.data import augment

    monkeypatch.setattr(
        augment, "_apply_to", getattr(augment, f"_apply_{'to_selected' if masking == 'selected' else 'where'}")
    )
    images = torch.randint(0, 256, (batch, channels, size + 4, size + 4), dtype=torch.uint8)
    both = BYOLAugment(size, (0.5,) * channels, (0.25,) * channels)
    multi = MultiCropAugment(size, (0.5,) * channels, (0.25,) * channels, local_crops=3, local_size=size // 2)
    for pipeline, views in (
        (both, [both.view1, both.view2]),
        (multi, [multi.globals.view1, multi.globals.view2, *multi.locals]),
    ):
        torch.manual_seed(3)
        together = pipeline(images)
        torch.manual_seed(3)
        alone = [view(images) for view in views]
        assert len(together) == len(alone)
        for a, b in zip(together, alone, strict=True):
            assert torch.equal(a, b)


def test_the_accelerators_draws_follow_each_views_distributions():
    """draw_batched draws both views' numbers at once (one launch); each must come from the distribution
    draw_view draws it from: chances within 3.5σ, values in their ranges, boxes as RandomResizedCrop's."""
    from byol.data.augment import draw_batched

    n = 6000
    draws = draw_batched([VIEW1, VIEW2], n, 3, 28, 28, "cpu")
    for rows, view in ((slice(0, n), VIEW1), (slice(n, 2 * n), VIEW2)):
        for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
            assert_frequency(
                getattr(draws, name)[rows], getattr(view, f"{name}_prob" if name != "jitter" else "jitter_prob")
            )
        for name, low, high in (
            ("brightness", -view.brightness, view.brightness),
            ("contrast", 1 - view.contrast, 1 + view.contrast),
            ("saturation", 1 - view.saturation, 1 + view.saturation),
            ("hue", -view.hue, view.hue),
            ("sigma", *view.blur_sigma),
        ):
            values = getattr(draws, name)[rows]
            assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, name
            assert abs(values.mean().item() - (low + high) / 2) < 3.5 * (high - low) / math.sqrt(12 * n), name
        assert torch.equal(draws.order[rows].sort(1).values, torch.arange(4).expand(n, 4))
    reference = _crop_boxes(2 * n, 28, 28, VIEW1, "cpu")
    for boxes in (draws.boxes, reference):
        x0, y0, w, h = boxes.unbind(1)
        area = w * h / (28 * 28)
        assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6 and (x0 >= 0).all() and (y0 >= 0).all()
        assert (x0 + w <= 28 + 1e-4).all() and (y0 + h <= 28 + 1e-4).all()
    spread = 3.5 * math.sqrt(2 * reference[:, 2:].prod(1).var().item() / (2 * n)) / (28 * 28)
    assert abs(draws.boxes[:, 2:].prod(1).mean() - reference[:, 2:].prod(1).mean()) / (28 * 28) < spread
    grey = draw_batched([VIEW1], 100, 1, 28, 28, "cpu")
    assert not grey.grayscale.any()  # grey images have no colour to remove


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28), (3, 96)])
def test_the_accelerators_path_gives_the_reference_pixels_for_the_same_draws(channels, size, monkeypatch):
    """apply_batched (a direct sampling grid, one colour operation, one select per stage) against apply_view,
    the code the CPU runs, on the same draws. Every stage is continuous in its inputs, so they differ by float
    round-off only."""
    from byol.data import augment

    monkeypatch.setattr(augment, "_apply_to", augment._apply_where)
    images = torch.rand(24, channels, size + 4, size + 4).repeat(2, 1, 1, 1)  # noise: the steepest images
    draws = augment.draw_batched([VIEW1, VIEW2], 24, channels, size + 4, size + 4, "cpu")
    assert draws.jitter.any() and draws.blur.any() and draws.solarize.any() and draws.flip.any()
    # The grid: a coordinate in [-1, 1] rounded differently (a few ulp of 1) moves a sample by that times
    # half the input's width in pixels, and bicubic interpolation changes at most about twice the largest
    # step between neighbouring pixels per pixel moved.
    steepest = max(images.diff(dim=d).abs().max().item() for d in (2, 3))
    bound = 4 * 2**-23 * (size + 4) / 2 * 2 * steepest
    direct = augment.resample_batched(images, draws.boxes, draws.flip, size)
    assert (direct - augment.resample(images, draws.boxes, draws.flip, size)).abs().max() <= bound
    # The rest, from the same resampled pixels: the same float32 operations, summed in another order at most.
    monkeypatch.setattr(augment, "resample_batched", augment.resample)
    zero, one = torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    fast = augment.apply_batched(images, draws, size, zero, one)
    assert (fast - augment.apply_view(images, draws, size, zero, one)).abs().max() <= 1e-5


def test_the_augmentation_on_an_accelerator_takes_the_batched_path():
    # the meta device stands for an accelerator: shapes only, the colour chain as its one registered operation
    from torch.utils._python_dispatch import TorchDispatchMode

    class Names(TorchDispatchMode):
        seen: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    pipeline = BYOLAugment(32, (0.5,) * 3, (0.25,) * 3).to("meta")
    with Names() as names:
        views = pipeline(torch.empty(8, 3, 36, 36, dtype=torch.uint8, device="meta"))
    assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2
    assert names.seen.count("byol.colour_jitter.default") == 1 and "aten.nonzero.default" not in names.seen
