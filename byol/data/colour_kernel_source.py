"""The Triton program behind `byol::colour_jitter` (colour_kernel.py says what it computes and why).

Imported on first use, and only where Triton is installed: Triton decides when it decorates whether to
interpret (TRITON_INTERPRET=1). Every operation is computed at every position and selected with `where`, as
the torch code does: no branch, so the interpreter and the compiler run the same program.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def colour_program(x_ptr, out_ptr, params_ptr, order_ptr, hw, CHANNELS: tl.constexpr, BLOCK: tl.constexpr):
    image = tl.program_id(0).to(tl.int64)
    source = x_ptr + image * CHANNELS * hw
    target = out_ptr + image * CHANNELS * hw
    row = params_ptr + image * 6
    jitter = tl.load(row) > 0.5
    brightness = tl.load(row + 1)
    contrast = tl.load(row + 2)
    saturation = tl.load(row + 3)
    hue_shift = tl.load(row + 4)
    grayscale = tl.load(row + 5) > 0.5
    ops = order_ptr + image * 4
    contrast_at = contrast_position(ops, jitter)  # phase 0 runs the chain up to it for the mean contrast needs
    mean_r = tl.full([], 0.0, tl.float32)
    mean_g = tl.full([], 0.0, tl.float32)
    mean_b = tl.full([], 0.0, tl.float32)
    for phase in tl.static_range(2):
        end = hw
        if phase == 0:
            end = tl.where(contrast_at < 4, hw, 0)
        sum_r = tl.zeros([BLOCK], tl.float32)
        sum_g = tl.zeros([BLOCK], tl.float32)
        sum_b = tl.zeros([BLOCK], tl.float32)
        for start in range(0, end, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            inside = offsets < hw
            r, g, b = load_pixels(source, offsets, inside, hw, CHANNELS)
            for position in tl.static_range(4):
                op = tl.load(ops + position)
                on = jitter
                if phase == 0:
                    on = on & (position < contrast_at)
                r, g, b = jitter_step(
                    r, g, b, op, on, brightness, contrast, saturation, hue_shift, mean_r, mean_g, mean_b, CHANNELS
                )
            if phase == 0:
                sum_r += tl.where(inside, r, 0.0)
                sum_g += tl.where(inside, g, 0.0)
                sum_b += tl.where(inside, b, 0.0)
            else:
                store_pixels(target, offsets, inside, hw, r, g, b, grayscale, CHANNELS)
        if phase == 0:
            mean_r = tl.sum(sum_r, axis=0) / hw
            mean_g = tl.sum(sum_g, axis=0) / hw
            mean_b = tl.sum(sum_b, axis=0) / hw


@triton.jit
def contrast_position(ops, jitter):
    """The position of contrast in the image's order; 4 where the image is not jittered."""
    contrast_at = tl.full([], 4, tl.int32)
    for position in tl.static_range(4):
        op = tl.load(ops + position)
        contrast_at = tl.where(jitter & (op == 1) & (contrast_at == 4), position, contrast_at)
    return contrast_at


@triton.jit
def load_pixels(source, offsets, inside, hw, CHANNELS: tl.constexpr):
    """A tile of each channel; a grey image's one channel three times (its g and b are never stored)."""
    r = tl.load(source + offsets, mask=inside, other=0.0)
    g = r
    b = r
    if CHANNELS == 3:
        g = tl.load(source + hw + offsets, mask=inside, other=0.0)
        b = tl.load(source + 2 * hw + offsets, mask=inside, other=0.0)
    return r, g, b


@triton.jit
def store_pixels(target, offsets, inside, hw, r, g, b, grayscale, CHANNELS: tl.constexpr):
    """The tile, made grey where `grayscale` with augment.GRAY_WEIGHTS (summed in their order)."""
    if CHANNELS == 3:
        gray = r * 0.2989 + g * 0.5870 + b * 0.1140
        r = tl.where(grayscale, gray, r)
        tl.store(target + hw + offsets, tl.where(grayscale, gray, g), mask=inside)
        tl.store(target + 2 * hw + offsets, tl.where(grayscale, gray, b), mask=inside)
    tl.store(target + offsets, r, mask=inside)


@triton.jit
def clamp01(v):
    return tl.minimum(tl.maximum(v, 0.0), 1.0)


@triton.jit
def remainder(a, m):
    # torch.remainder's float rule: C's fmod (Triton's %), moved into [0, m) when negative
    mod = a % m
    return tl.where(mod < 0, mod + m, mod)


@triton.jit
def jitter_step(
    r, g, b, op, on, brightness, contrast, saturation, hue_shift, mean_r, mean_g, mean_b, CHANNELS: tl.constexpr
):
    """The jitter operation `op` where `on`, as augment.adjust_*: each result clipped to [0, 1]."""
    bright = on & (op == 0)
    r = tl.where(bright, clamp01(r + brightness), r)
    g = tl.where(bright, clamp01(g + brightness), g)
    b = tl.where(bright, clamp01(b + brightness), b)
    contrasted = on & (op == 1)
    r = tl.where(contrasted, clamp01((r - mean_r) * contrast + mean_r), r)
    g = tl.where(contrasted, clamp01((g - mean_g) * contrast + mean_g), g)
    b = tl.where(contrasted, clamp01((b - mean_b) * contrast + mean_b), b)
    if CHANNELS == 3:
        r, g, b = saturate(r, g, b, on & (op == 2), saturation)
        r, g, b = shift_hue(r, g, b, on & (op == 3), hue_shift)
    return r, g, b


@triton.jit
def value_and_chroma(r, g, b):
    """HSV's value (the largest channel) and chroma (largest − smallest)."""
    value = tl.maximum(tl.maximum(r, g), b)
    return value, value - tl.minimum(tl.minimum(r, g), b)


@triton.jit
def saturate(r, g, b, on, factor):
    value, chroma = value_and_chroma(r, g, b)
    # no limit where there is no chroma (the torch code's infinity; any factor is below this)
    limit = tl.where(chroma > 0, value / tl.maximum(chroma, 1e-12), 3.0e38)
    effective = tl.minimum(factor, limit)
    r = tl.where(on, clamp01(value - (value - r) * effective), r)
    g = tl.where(on, clamp01(value - (value - g) * effective), g)
    b = tl.where(on, clamp01(value - (value - b) * effective), b)
    return r, g, b


@triton.jit
def shift_hue(r, g, b, on, shift):
    value, chroma = value_and_chroma(r, g, b)
    saturation = tl.where(value > 0, chroma / tl.maximum(value, 1e-12), 0.0)
    safe = tl.where(chroma > 0, chroma, 1.0)
    hue_r = remainder((g - b) / safe, 6.0)
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    hue = tl.where(value == r, hue_r, tl.where(value == g, hue_g, hue_b))
    hue = tl.where(chroma > 0, hue / 6.0, 0.0)
    hue = remainder(hue + shift, 1.0)
    r = tl.where(on, clamp01(hsv_channel(hue, saturation, value, 5.0)), r)
    g = tl.where(on, clamp01(hsv_channel(hue, saturation, value, 3.0)), g)
    b = tl.where(on, clamp01(hsv_channel(hue, saturation, value, 1.0)), b)
    return r, g, b


@triton.jit
def hsv_channel(hue, saturation, value, n):
    k = remainder(n + hue * 6.0, 6.0)
    return value - value * saturation * tl.minimum(tl.maximum(tl.minimum(k, 4.0 - k), 0.0), 1.0)
