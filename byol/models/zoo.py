"""Encoders a user already has: any torchvision classification model (`torchvision:NAME`) or timm model
(`timm:NAME`, with timm installed: `pip install 'byol[timm]'`), built untrained, head removed.

- torchvision: `torchvision.models.get_model(NAME)`; the last Linear layer (the classifier) becomes an
  Identity and its input size is the feature size; a first convolution of another channel count is
  rebuilt for `in_channels`; ViTs get `image_size`.
- timm: `timm.create_model(NAME, num_classes=0, in_chans=…)` (timm removes the head itself and declares
  `num_features`); models that take `img_size` get it, ViTs' `patch_size` is reduced so that small
  images still have at least 8 patches a side (32 px: patch 4), and `dynamic_img_size=True` (with
  `dynamic_img_pad=True`) where the model has them, so multi-crop's smaller local crops go through:
  position embeddings interpolated, a side that is no multiple of the patch padded up to one.
The module returned carries `feature_dim`; its state_dict is the original model's without the head, so
`byol export` can hand it back to the original class.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect

from torch import nn

from byol.models.conv import conv_like

PREFIXES = ("torchvision:", "timm:")
MIN_PATCHES_PER_SIDE = 8
# torchvision builders whose defaults return auxiliary outputs in training mode
TORCHVISION_OPTIONS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def torchvision_names() -> list[str]:
    from torchvision import models as torchvision_models  # over a second to import: only when asked

    return torchvision_models.list_models(module=torchvision_models)


def timm_installed() -> bool:
    return importlib.util.find_spec("timm") is not None


def problem(name: str) -> str | None:
    """What is wrong with a `torchvision:`/`timm:` backbone name (not installed, unknown), or None."""
    library, _, model = name.partition(":")
    if library == "torchvision":
        names = torchvision_names()
        listing = "torchvision.models.list_models()"
        unknown = f"torchvision has no classification model '{model}'"
    elif not timm_installed():
        return "timm is not installed: pip install 'byol[timm]' (or pip install timm)"
    else:
        import timm  # optional: imported only for timm backbones

        names, listing, unknown = timm.list_models(), "timm.list_models()", f"timm has no model '{model}'"
    if model in names:
        return None
    near = difflib.get_close_matches(model, names, n=3)
    return unknown + (f"; did you mean {', '.join(near)}?" if near else f" (see {listing})")


def build(name: str, image_size: int, in_channels: int) -> nn.Module:
    """The model without its head, taking `in_channels`-channel images of `image_size` px; carries `feature_dim`."""
    reason = problem(name)
    if reason:
        raise ValueError(reason)
    model, _ = original(name, image_size, in_channels)
    if name.startswith("timm:"):
        model.feature_dim = model.num_features  # timm removed the head itself (num_classes=0)
        return model
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    parent, attribute, head = _last_linear(model)
    if head is None:
        raise ValueError(f"{name} has no Linear classifier to remove; wrap it yourself and pass feature_dim")
    setattr(parent, attribute, nn.Identity())
    model.feature_dim = head.in_features
    return model


def original(name: str, image_size: int, in_channels: int) -> tuple[nn.Module, str]:
    """The library's own model as its call builds it, and that call as Python text: torchvision's with its
    classifier (3-channel), timm's with `num_classes=0` (no head) and `in_chans`. `byol export` writes
    weights this model loads with strict=True."""
    library, _, model = name.partition(":")
    if library == "torchvision":
        from torchvision import models as torchvision_models

        options = {**TORCHVISION_OPTIONS.get(model, {})}
        try:  # ViTs need the image size for their position embeddings; other builders refuse the keyword
            built = torchvision_models.get_model(model, weights=None, image_size=image_size, **options)
            options["image_size"] = image_size
        except TypeError:
            built = torchvision_models.get_model(model, weights=None, **options)
        return built, _call("torchvision.models.get_model", model, {"weights": None, **options})
    import timm  # optional: imported only for timm backbones

    options = {"num_classes": 0, "in_chans": in_channels}
    built = timm.create_model(model, **options)
    accepts = inspect.signature(type(built).__init__).parameters
    if "img_size" in accepts:  # position embeddings: built for the image size, with enough patches a side
        options["img_size"] = image_size
        patch = getattr(getattr(built, "patch_embed", None), "patch_size", None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if patch and image_size // patch < MIN_PATCHES_PER_SIDE and "patch_size" in accepts:
            options["patch_size"] = max(1, image_size // MIN_PATCHES_PER_SIDE)
        if "dynamic_img_size" in accepts:  # multi-crop's local crops are smaller than the image size
            options["dynamic_img_size"] = True
            if "dynamic_img_pad" in accepts:  # and need not be a multiple of the patch (14 px local crops at 32)
                options["dynamic_img_pad"] = True
        built = timm.create_model(model, **options)
    return built, _call("timm.create_model", model, options)


def _call(function: str, model: str, options: dict) -> str:
    return f"{function}({model!r}" + "".join(f", {k}={v!r}" for k, v in options.items()) + ")"


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for module in model.modules():
        for attribute, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(module, attribute, conv_like(child, in_channels=in_channels))
                return


def _last_linear(model: nn.Module):
    """(parent module, attribute, layer) of the last nn.Linear in definition order, or (None, None, None)."""
    found = (None, None, None)
    for module in model.modules():
        for attribute, child in module.named_children():
            if isinstance(child, nn.Linear):
                found = (module, attribute, child)
    return found


def first_conv_in_channels(module: nn.Module) -> int | None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            return layer.in_channels
    return None


def declared_input_shape(backbone: nn.Module) -> tuple[int, int, int] | None:
    """The (C, H, W) a fixed-size backbone declares: torchvision ViTs' `image_size`, timm's patch embedding
    `img_size`, else timm's `pretrained_cfg['input_size']`; None for a backbone that declares none."""
    size = getattr(backbone, "image_size", None)
    embed = getattr(backbone, "patch_embed", None)
    if size is None and embed is not None:
        size = getattr(embed, "img_size", None)
    if size is None:
        declared = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size")
        size = tuple(declared[-2:]) if declared else None
    if isinstance(size, int):
        size = (size, size)
    if not isinstance(size, (tuple, list)):
        return None
    return (first_conv_in_channels(backbone) or 3, *size[-2:])
