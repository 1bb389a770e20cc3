"""BYOL's two asymmetric view pipelines, batched on the training device with per-image parameters.

Images come in as uint8 (0..255) or float (0..1) tensors of shape (B, C, H, W), C = 1 or 3, on any
device. Every random parameter (crop box, flip, jitter factors and their order, grayscale, blur
sigma, solarize) is drawn per image from torch's generator on that device, so a run's augmentations
are reproducible from its RNG state.

Pipeline per view (the paper's table and the official code's order; docs/method.md has the numbers):
crop+resize (bicubic) → flip → colour jitter (random order) → grayscale → blur → solarize → clip →
normalise. Grey (1-channel) images skip saturation, hue and grayscale: they have no colour.

Every random number of a view is drawn first (`draw_view`, in a fixed order), then applied (`apply_view`).
Views of the same size go through the pipeline as one batch (`augment_views`): BYOL's two views take
half the kernel launches, which on a GPU is most of the augmentation's cost, and each view still gets the
numbers, and so the bits, it would get alone (tested).

Deviations from the official code, each for a reason:
- The crop is taken with a continuous box (no rounding to whole pixels) and resampled with
  `grid_sample` so the whole batch is cropped in one call; the box distribution is torchvision's
  RandomResizedCrop (10 tries, then the whole image).
- The blur pads by reflection (torchvision's choice) instead of zeros, so borders do not darken.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from byol.data import colour_kernel
from byol.runtime.logs import log

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


@dataclass(frozen=True)
class ViewConfig:
    """Probabilities and ranges of one view's pipeline; defaults are the paper's view 1."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0


VIEW1 = ViewConfig()
VIEW2 = ViewConfig(blur_prob=0.1, solarize_prob=0.2)

# The paper's augmentation ablations, as the probabilities each removal sets to zero. "color" is the
# colour jitter (brightness, contrast, saturation, hue); "all-but-crop" keeps only the random crop.
REMOVABLE = {
    "color": ("jitter_prob",),
    "grayscale": ("grayscale_prob",),
    "blur": ("blur_prob",),
    "solarize": ("solarize_prob",),
    "flip": ("flip_prob",),
    "all-but-crop": ("jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "flip_prob"),
}


def without(view: ViewConfig, removed: list[str] | tuple[str, ...]) -> ViewConfig:
    """`view` with the named augmentations switched off (see REMOVABLE)."""
    zeroed = {field: 0.0 for name in removed for field in REMOVABLE[name]}
    return dataclasses.replace(view, **zeroed)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


def _crop_boxes(batch: int, height: int, width: int, cfg: ViewConfig, device) -> torch.Tensor:
    """(B, 4) boxes (x0, y0, w, h) in pixels, drawn like torchvision's RandomResizedCrop."""
    tries = 10
    area = height * width
    scale = torch.empty(batch, tries, device=device).uniform_(*cfg.crop_scale) * area
    log_ratio = torch.empty(batch, tries, device=device).uniform_(
        math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    )
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(scale * ratio)
    h = torch.sqrt(scale / ratio)
    fits = (w <= width) & (h <= height)
    # First try that fits; images where none fits take the whole frame.
    first = torch.argmax(fits.int(), dim=1)
    any_fit = fits.any(dim=1)
    rows = torch.arange(batch, device=device)
    w = torch.where(any_fit, w[rows, first], torch.full_like(w[:, 0], width))
    h = torch.where(any_fit, h[rows, first], torch.full_like(h[:, 0], height))
    x0 = torch.rand(batch, device=device) * (width - w)
    y0 = torch.rand(batch, device=device) * (height - h)
    return torch.stack([x0, y0, w, h], dim=1)


def crop_and_flip(images: torch.Tensor, out_size: int, cfg: ViewConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Random resized crop (bicubic) and horizontal flip in one resampling pass; returns the flip mask too."""
    batch, _, height, width = images.shape
    boxes = _crop_boxes(batch, height, width, cfg, images.device)
    flip = torch.rand(batch, device=images.device) < cfg.flip_prob
    return resample(images, boxes, flip, out_size), flip


def resample(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """Each image's box (x0, y0, w, h), mirrored where `flip`, resampled bicubically to out_size², in [0, 1]."""
    batch, _, height, width = images.shape
    x0, y0, w, h = boxes.unbind(1)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1].
    scale_x = (w / width) * torch.where(flip, -1.0, 1.0)
    scale_y = h / height
    centre_x = (x0 + w / 2) / width * 2 - 1
    centre_y = (y0 + h / 2) / height * 2 - 1
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = scale_y
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, [batch, images.shape[1], out_size, out_size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    # Bicubic overshoots; the rest of the pipeline expects [0, 1].
    return out.clamp_(0, 1)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    value, _ = rgb.max(dim=1)
    minimum, _ = rgb.min(dim=1)
    chroma = value - minimum
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue_r = ((g - b) / safe_chroma) % 6
    hue_g = (b - r) / safe_chroma + 2
    hue_b = (r - g) / safe_chroma + 4
    hue = torch.where(value == r, hue_r, torch.where(value == g, hue_g, hue_b))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(1)
    # The standard closed form: channel n takes v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6.
    channels = []
    for n in (5, 3, 1):
        k = (n + hue * 6) % 6
        channels.append(value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, dim=1)


def adjust_brightness(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (x + delta.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * factor.view(-1, 1, 1, 1) + mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # Scaling HSV saturation by f, clipped to [0, 1], keeps hue and value, which in RGB is
    # c' = v − f_eff·(v − c) with f_eff = min(f, v / (v − min)): no HSV round trip needed.
    value, _ = x.max(dim=1, keepdim=True)
    minimum, _ = x.min(dim=1, keepdim=True)
    chroma = value - minimum
    limit = torch.where(chroma > 0, value / chroma.clamp_min(1e-12), torch.full_like(chroma, float("inf")))
    effective = torch.minimum(factor.view(-1, 1, 1, 1), limit)
    return (value - (value - x) * effective).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + delta.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hsv).clamp_(0, 1)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    return (x * _gray_weights(x.device, x.dtype)).sum(dim=1, keepdim=True).expand_as(x)


@functools.cache
def _gray_weights(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Made once per device: a tensor built from Python numbers is a host-to-device copy, which made the
    # host wait for the GPU twice a step (measured on an H100 by benchmarks/gpu_check.sh).
    return torch.tensor(GRAY_WEIGHTS, dtype=dtype, device=device).view(1, 3, 1, 1)


def _apply_to(x: torch.Tensor, mask: torch.Tensor, fn, *params: torch.Tensor) -> torch.Tensor:
    """`fn` on the images `mask` selects (with their `params`); the others pass through unchanged.

    Both ways below give the same bits (tested). On an accelerator the whole batch goes through `fn`
    and a `torch.where` selects: indexing by the mask would make the host wait for the device to say
    how many images were selected, several times per view. On the CPU nothing waits, and computing
    only the selected images is cheaper (docs/performance.md).
    """
    if x.device.type == "cpu":
        return _apply_to_selected(x, mask, fn, *params)
    return _apply_where(x, mask, fn, *params)


def _apply_where(x: torch.Tensor, mask: torch.Tensor, fn, *params: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), fn(x, *params), x)


def _apply_to_selected(x: torch.Tensor, mask: torch.Tensor, fn, *params: torch.Tensor) -> torch.Tensor:
    index = mask.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    x = x.clone() if x.requires_grad else x
    x[index] = fn(x[index], *(p[index] for p in params))
    return x


def colour_jitter(x: torch.Tensor, draws: ViewDraws) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in each image's drawn order, each clipped to [0, 1]."""
    ops = [(adjust_brightness, draws.brightness), (adjust_contrast, draws.contrast)]
    if x.shape[1] == 3:
        ops += [(adjust_saturation, draws.saturation), (adjust_hue, draws.hue)]
    for position in range(4):
        for op_index, (fn, param) in enumerate(ops):
            x = _apply_to(x, draws.jitter & (draws.order[:, position] == op_index), fn, param)
    return x


def colour_reference(x: torch.Tensor, params: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`byol::colour_jitter` (colour_kernel.py) computed by the functions above: colour jitter, then grayscale."""
    jitter, brightness, contrast, saturation, hue, grayscale = params.unbind(1)
    draws = ViewDraws(None, None, jitter > 0.5, brightness, contrast, saturation, hue, order, None, None, None, None)
    x = colour_jitter(x, draws)
    return _apply_to(x, grayscale > 0.5, to_grayscale) if x.shape[1] == 3 else x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image; kernel side 2·floor(side/20) + 1."""
    batch, channels, height, width = x.shape
    radius = max(min(height, width) // 20, 1)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    # (B·C, K): one kernel per image channel (expand, not repeat_interleave, which can ask the device for sizes)
    kernel = kernel.unsqueeze(1).expand(-1, channels, -1).reshape(batch * channels, -1)
    flat = x.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def solarize(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0.5, x, 1 - x)


class ViewDraws(NamedTuple):
    """One view's random parameters, a row per image, as `draw_view` draws them."""

    boxes: torch.Tensor  # (B, 4) crop boxes x0, y0, w, h in input pixels
    flip: torch.Tensor  # (B,) bool
    jitter: torch.Tensor  # (B,) bool: colour jitter applied
    brightness: torch.Tensor  # (B,) added
    contrast: torch.Tensor  # (B,) factor
    saturation: torch.Tensor  # (B,) factor
    hue: torch.Tensor  # (B,) shift, in turns
    order: torch.Tensor  # (B, 4) the order of the four jitter operations
    grayscale: torch.Tensor  # (B,) bool
    blur: torch.Tensor  # (B,) bool
    sigma: torch.Tensor  # (B,) the blur's σ in pixels
    solarize: torch.Tensor  # (B,) bool

    @staticmethod
    def cat(draws: Sequence[ViewDraws]) -> ViewDraws:
        return ViewDraws(*(torch.cat(field) for field in zip(*draws, strict=True)))


def draw_view(batch: int, channels: int, height: int, width: int, cfg: ViewConfig, device) -> ViewDraws:
    """Every random number of one view, from torch's generator on `device`, always in this order (a run's
    augmentations, and a resumed run's, depend on it)."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(batch, device=device).uniform_(low, high)

    def happens(p: float) -> torch.Tensor:
        return torch.rand(batch, device=device) < p

    boxes = _crop_boxes(batch, height, width, cfg, device)
    flip = happens(cfg.flip_prob)
    jitter = happens(cfg.jitter_prob)
    brightness = uniform(-cfg.brightness, cfg.brightness)
    contrast = uniform(1 - cfg.contrast, 1 + cfg.contrast)
    saturation = uniform(1 - cfg.saturation, 1 + cfg.saturation)
    hue = uniform(-cfg.hue, cfg.hue)
    order = torch.argsort(torch.rand(batch, 4, device=device), dim=1)
    # grey images have no colour to remove: nothing drawn for them
    grayscale = happens(cfg.grayscale_prob) if channels == 3 else torch.zeros(batch, dtype=torch.bool, device=device)
    blur = happens(cfg.blur_prob)
    sigma = uniform(*cfg.blur_sigma)
    solarize = happens(cfg.solarize_prob)
    return ViewDraws(
        boxes, flip, jitter, brightness, contrast, saturation, hue, order, grayscale, blur, sigma, solarize
    )


def apply_view(x: torch.Tensor, draws: ViewDraws, out_size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The pipeline on float images in [0, 1] with the given draws (one row per image of `x`)."""
    x = resample(x, draws.boxes, draws.flip, out_size)
    x = colour_jitter(x, draws)
    if x.shape[1] == 3:
        x = _apply_to(x, draws.grayscale, to_grayscale)
    x = _apply_to(x, draws.blur, gaussian_blur, draws.sigma)
    x = _apply_to(x, draws.solarize, solarize)
    return (x.clamp_(0, 1) - mean) / std


class ViewAugment(torch.nn.Module):
    """One view's pipeline. `forward(images, return_params=True)` also returns which images got
    which operation (boolean masks), for tests and for inspecting a run."""

    def __init__(self, image_size: int, mean, std, cfg: ViewConfig = VIEW1):
        super().__init__()
        self.image_size = image_size
        self.cfg = cfg
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        # views with the same output and statistics can share a batch (augment_views); kept on the host
        self.batch_key = (image_size, tuple(self.mean.flatten().tolist()), tuple(self.std.flatten().tolist()))

    def draw(self, x: torch.Tensor) -> ViewDraws:
        batch, channels, height, width = x.shape
        return draw_view(batch, channels, height, width, self.cfg, x.device)

    def apply(self, x: torch.Tensor, draws: ViewDraws) -> torch.Tensor:
        return apply_view(x, draws, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, return_params: bool = False):
        x = to_unit_float(images)
        draws = self.draw(x)
        out = self.apply(x, draws)
        if return_params:
            params = dict(
                flip=draws.flip,
                jitter=draws.jitter,
                grayscale=draws.grayscale,
                blur=draws.blur,
                solarize=draws.solarize,
            )
            return out, params
        return out


@torch.no_grad()
def augment_views(views: Sequence[ViewAugment], images: torch.Tensor) -> list[torch.Tensor]:
    """Each view of the same images, computed as one batch per output size: BYOL's two views in one pass,
    multi-crop's local crops in another.

    On the CPU each view is drawn as if it ran alone (the same numbers, so the same bits). On an accelerator
    the views of a batch are drawn together and run through `apply_batched`: the same pipeline in a fraction
    of the kernel launches."""
    x = to_unit_float(images)
    groups: dict[tuple, list[int]] = {}
    for index, view in enumerate(views):
        groups.setdefault(view.batch_key, []).append(index)
    draws = None if batched_path(x) else [view.draw(x) for view in views]
    outputs: list[torch.Tensor | None] = [None] * len(views)
    for indices in groups.values():
        view = views[indices[0]]
        together = x.repeat(len(indices), 1, 1, 1) if len(indices) > 1 else x
        if draws is None:
            drawn = draw_batched([views[i].cfg for i in indices], *x.shape, x.device)
            out = apply_batched(together, drawn, view.image_size, view.mean, view.std)
        else:
            out = view.apply(together, ViewDraws.cat([draws[i] for i in indices]))
        for index, chunk in zip(indices, out.chunk(len(indices)), strict=True):
            outputs[index] = chunk
    return outputs


def batched_path(x: torch.Tensor) -> bool:
    """Whether `augment_views` takes the accelerators' path below: everywhere but on the CPU."""
    return x.device.type != "cpu"


# The accelerators' path: the pipeline above in about 60 operations per call instead of about 630, each a
# kernel launch on a GPU (benchmarks/augment_ops.py counts them). The same operations with the same
# parameter distributions; given the same draws, the same pixels as `apply_view` up to float round-off
# (tests/data/test_augment.py).

DRAWN_COLUMNS = 36  # crop scale ×10 tries, log ratio ×10, corner x, y, five chances, four jitter values, σ, order ×4


@functools.cache
def _draw_table(cfgs: tuple[ViewConfig, ...], channels: int, height: int, width: int, device: torch.device):
    """Per view, the uniform ranges of the drawn columns as (low, span), and the five chances (flip, jitter,
    grayscale, blur, solarize): made once, so a draw copies nothing from the host."""
    area, lows, spans, chances = height * width, [], [], []
    for c in cfgs:
        log_ratio = (math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]))
        jitter_low = (-c.brightness, 1 - c.contrast, 1 - c.saturation, -c.hue, c.blur_sigma[0])
        jitter_span = (2 * c.brightness, 2 * c.contrast, 2 * c.saturation, 2 * c.hue, c.blur_sigma[1] - c.blur_sigma[0])
        lows.append([c.crop_scale[0] * area] * 10 + [log_ratio[0]] * 10 + [0.0] * 7 + [*jitter_low] + [0.0] * 4)
        spans.append(
            [(c.crop_scale[1] - c.crop_scale[0]) * area] * 10
            + [log_ratio[1] - log_ratio[0]] * 10
            + [1.0] * 7
            + [*jitter_span]
            + [1.0] * 4
        )
        grayscale = c.grayscale_prob if channels == 3 else 0.0  # grey images have no colour to remove
        chances.append([c.flip_prob, c.jitter_prob, grayscale, c.blur_prob, c.solarize_prob])
    table = torch.tensor([lows, spans], dtype=torch.float32).unsqueeze(2).to(device)
    return table[0], table[1], torch.tensor(chances, dtype=torch.float32).unsqueeze(1).to(device)


@functools.cache
def _frame(height: int, width: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([width, height], dtype=torch.float32, device=device)


def draw_batched(cfgs: Sequence[ViewConfig], batch: int, channels: int, height: int, width: int, device) -> ViewDraws:
    """Every random number of several views of a batch from one uniform draw: a row per image, view after view
    (as ViewDraws.cat), each drawn from the distribution `draw_view` draws it from."""
    low, span, chance = _draw_table(tuple(cfgs), channels, height, width, torch.device(device))
    values = torch.addcmul(low, torch.rand(len(cfgs), batch, DRAWN_COLUMNS, device=device), span)
    flip, jitter, grayscale, blur, solarize = (values[..., 22:27] < chance).view(-1, 5).unbind(1)
    values = values.view(-1, DRAWN_COLUMNS)
    brightness, contrast, saturation, hue, sigma = values[:, 27:32].unbind(1)
    order = values[:, 32:].argsort(dim=1)
    boxes = _boxes(values, _frame(height, width, values.device))
    return ViewDraws(
        boxes, flip, jitter, brightness, contrast, saturation, hue, order, grayscale, blur, sigma, solarize
    )


def _boxes(values: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """(N, 4) crop boxes (x0, y0, w, h) from the drawn columns: the first of 10 tries that fits, as
    `_crop_boxes`; the whole frame where none does."""
    scale, ratio = values[:, :10], values[:, 10:20].exp()
    sides = (scale.unsqueeze(2) * torch.stack([ratio, ratio.reciprocal()], 2)).sqrt()  # (N, 10, (w, h))
    fits = (sides <= frame).all(2)
    first = fits.byte().argmax(1, keepdim=True)
    chosen = sides.gather(1, first.unsqueeze(2).expand(-1, -1, 2)).squeeze(1)
    sides = torch.where(fits.any(1, keepdim=True), chosen, frame)
    return torch.cat([values[:, 20:22] * (frame - sides), sides], 1)


@functools.cache
def _unit_grid(out_size: int, device: torch.device) -> torch.Tensor:
    """(1, S, S, (x, y)): the pixel centres of the output in [-1, 1], as affine_grid places them."""
    return F.affine_grid(torch.eye(2, 3, device=device).unsqueeze(0), [1, 1, out_size, out_size], align_corners=False)


@functools.cache
def _mirror_x(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([True, False], device=device), torch.tensor([1.0, -1.0], device=device)


def resample_batched(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """`resample` with the sampling grid made directly (a crop box and a mirror need no matrix)."""
    batch, _, height, width = images.shape
    frame = _frame(height, width, images.device)
    x_axis, signs = _mirror_x(images.device)
    mirror = signs[(flip.unsqueeze(1) & x_axis).long()]  # -1 on x where flipped, else 1
    scale = (boxes[:, 2:] / frame * mirror).view(batch, 1, 1, 2)
    centre = (torch.add(boxes[:, 2:], boxes[:, :2], alpha=2) / frame - 1).view(batch, 1, 1, 2)
    grid = torch.addcmul(centre, _unit_grid(out_size, images.device), scale)
    out = F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0, 1)


def colour_chain(x: torch.Tensor, params: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """`byol::colour_jitter` where its kernel runs (or on the meta device, to be counted), else the torch code;
    a kernel Triton cannot build here is reported once and the torch code takes over."""
    if x.device.type == "meta" or colour_kernel.kernel_runs_on(x):
        try:
            return torch.ops.byol.colour_jitter(x, params, order)
        except colour_kernel.KernelUnavailable as error:
            log.warning(f"the colour kernel cannot be built here ({error}); the augmentation uses torch's operations")
    return colour_reference(x, params, order)


def apply_batched(x: torch.Tensor, draws: ViewDraws, out_size: int, mean: torch.Tensor, std: torch.Tensor):
    """`apply_view` in few launches: one resampling, the colour chain as one kernel (colour_kernel.py), one
    select per remaining stage."""
    x = resample_batched(x, draws.boxes, draws.flip, out_size)
    flags = torch.stack([draws.jitter, draws.grayscale], 1).float()
    params = torch.cat([flags[:, :1], torch.stack(draws[3:7], 1), flags[:, 1:]], 1)
    x = colour_chain(x, params, draws.order)
    x = torch.where(draws.blur.view(-1, 1, 1, 1), gaussian_blur(x, draws.sigma), x)
    x = torch.where(draws.solarize.view(-1, 1, 1, 1) & (x >= 0.5), 1 - x, x)
    return (x.clamp_(0, 1) - mean) / std


class BYOLAugment(torch.nn.Module):
    """Both views of the paper's pipeline: `view1, view2 = augment(images)`."""

    def __init__(self, image_size: int, mean, std, view1: ViewConfig = VIEW1, view2: ViewConfig = VIEW2):
        super().__init__()
        self.view1 = ViewAugment(image_size, mean, std, view1)
        self.view2 = ViewAugment(image_size, mean, std, view2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view1, view2 = augment_views([self.view1, self.view2], images)
        return view1, view2


# Multi-crop's small crops (DINO's and SwAV's official recipes): no solarize, blur half the time.
LOCAL_VIEW = ViewConfig(crop_scale=(0.05, 0.14), blur_prob=0.5)


def local_size_for(image_size: int) -> int:
    """The local crops' default side: 96/224 of the global crops', as in the official recipes (at least 8)."""
    return max(8, round(image_size * 3 / 7))


class MultiCropAugment(torch.nn.Module):
    """BYOL's two global views plus `local_crops` small ones: `view1, view2, *locals = augment(images)`.

    The global views may be BYOLAugment's; every local crop is drawn with `local_view` at `local_size`
    pixels. SwAV and DINO run same-sized crops through the encoder together."""

    def __init__(
        self,
        image_size: int,
        mean,
        std,
        local_crops: int,
        local_size: int,
        view1: ViewConfig = VIEW1,
        view2: ViewConfig = VIEW2,
        local_view: ViewConfig = LOCAL_VIEW,
    ):
        super().__init__()
        self.globals = BYOLAugment(image_size, mean, std, view1, view2)
        self.locals = torch.nn.ModuleList(ViewAugment(local_size, mean, std, local_view) for _ in range(local_crops))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(augment_views([self.globals.view1, self.globals.view2, *self.locals], images))


class EvalTransform(torch.nn.Module):
    """Deterministic preprocessing for evaluation: resize to the training size and normalise."""

    def __init__(self, image_size: int, mean, std):
        super().__init__()
        self.image_size = image_size
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_unit_float(images)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
            x = x.clamp_(0, 1)
        return (x - self.mean) / self.std
