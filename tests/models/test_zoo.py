"""Backbones a user already has: torchvision and timm models by name, fixed-size ViTs, LayerNorm and
norm-free encoders under every method."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import byol
from byol.data.datasets import FASHION_MNIST_SYSTEM_DIR
from byol.methods import METHODS, build_method
from byol.models import zoo
from byol.models.backbones import backbone_problem, build_backbone, feature_size
from byol.models.syncbn import SyncBatchNormAct, convert_sync_batchnorm

timm = pytest.importorskip("timm")

SMALL_HEADS = {"projection_dim": 16, "projector_hidden_dim": 32}


@pytest.mark.parametrize(
    "name, channels, size, dim",
    [
        (
            "torchvision:mobilenet_v3_small",
            1,
            32,
            1024,
        ),  # classifier = Linear, Hardswish, Dropout, Linear: the last goes
        ("torchvision:resnet18", 3, 32, 512),
        ("timm:resnet18", 1, 32, 512),
        ("timm:vit_tiny_patch16_224", 3, 32, 192),  # patch 16 → 4 so that 32 px still gives 8×8 patches
    ],
)
def test_library_models_by_name_lose_their_head_and_take_the_channels_and_size(name, channels, size, dim):
    encoder = build_backbone(name, image_size=size, in_channels=channels)
    assert encoder.feature_dim == dim
    assert encoder(torch.randn(2, channels, size, size)).shape == (2, dim)
    assert not any(isinstance(m, nn.Linear) and m.out_features == 1000 for m in encoder.modules())


def test_a_timm_vit_gets_the_image_size_and_a_patch_size_that_leaves_enough_patches():
    vit = build_backbone("timm:vit_tiny_patch16_224", image_size=32)
    assert vit.patch_embed.img_size == (32, 32) and vit.patch_embed.patch_size == (4, 4)
    assert vit.patch_embed.num_patches == 64
    large = build_backbone("timm:vit_tiny_patch16_224", image_size=224)
    assert large.patch_embed.patch_size == (16, 16)  # 14 patches a side: the model as published


def test_a_torchvision_vit_is_built_for_the_image_size():
    vit = build_backbone("torchvision:vit_b_32", image_size=64)
    assert vit.image_size == 64 and vit.feature_dim == 768
    assert vit(torch.randn(1, 3, 64, 64)).shape == (1, 768)


@pytest.mark.parametrize(
    "name, words",
    [
        ("torchvision:resnet180", "torchvision has no classification model 'resnet180'; did you mean resnet18, "),
        ("timm:not_a_model_at_all_xyz", "timm has no model 'not_a_model_at_all_xyz' (see timm.list_models())"),
        (
            "vgg11",
            "unknown backbone 'vgg11'; choose one of resnet18, resnet34, resnet50, torchvision:NAME or timm:NAME",
        ),
    ],
)
def test_an_unknown_name_is_one_line(name, words):
    assert backbone_problem(name).startswith(words)
    with pytest.raises(ValueError) as error:
        build_backbone(name)
    assert str(error.value).startswith(words) and "\n" not in str(error.value)


def test_a_missing_timm_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(zoo, "timm_installed", lambda: False)
    assert backbone_problem("timm:resnet18") == "timm is not installed: pip install 'byol[timm]' (or pip install timm)"


def test_our_resnet_options_do_not_apply_to_library_models():
    assert "group-ws" in backbone_problem("timm:resnet18", norm="group-ws")


def test_byol_finds_the_feature_size_a_fixed_size_backbone_declares_without_a_64px_dry_run():
    # the issue's example: timm's ViT refuses any size but its own, so a guessed 64×64 dry run would fail
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4)
    del vit.num_features  # nothing declared but the input size: found by a dry run at that size
    learner = byol.BYOL(vit, **SMALL_HEADS, predictor_hidden_dim=32)
    assert learner.feature_dim == 192
    views = torch.randn(2, 2, 3, 32, 32)
    assert torch.isfinite(learner(views[0], views[1]))


def test_byol_uses_timms_declared_width_and_torchvision_vits_declared_image_size():
    with_head = timm.create_model("resnet18", num_classes=7)
    assert feature_size(with_head) == 7  # a head left on gives its outputs, found by a dry run
    assert feature_size(timm.create_model("resnet18", num_classes=0)) == 512
    from torchvision.models import vit_b_32

    vit = vit_b_32(image_size=64)
    vit.heads = nn.Identity()
    assert zoo.declared_input_shape(vit) == (3, 64, 64) and feature_size(vit) == 768


def test_a_backbone_that_declares_nothing_and_refuses_64px_says_what_to_pass():
    class Fixed(nn.Module):
        def forward(self, x):
            assert x.shape[-1] == 40, "wrong size"
            return x.flatten(1)

    with pytest.raises(ValueError, match=r"pass feature_dim=D, or input_shape=\(C, H, W\)"):
        byol.BYOL(Fixed())
    assert byol.BYOL(Fixed(), input_shape=(1, 40, 40), **SMALL_HEADS, predictor_hidden_dim=32).feature_dim == 1600


class NormFree(nn.Module):
    """No normalisation layer at all: conv, ReLU, pool."""

    def __init__(self, channels: int = 1, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x):
        return self.body(x)


def _layer_norm_vit():
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=16, patch_size=4, depth=2, in_chans=1)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("make", [NormFree, _layer_norm_vit], ids=["norm-free", "layernorm-vit"])
def test_every_method_trains_a_layernorm_or_norm_free_backbone(method, make):
    torch.manual_seed(0)
    backbone = make()
    options = {
        **SMALL_HEADS,
        **({"prototypes": 8} if method in ("swav", "dino") else {}),
        **({"queue_size": 8} if method == "mocov2" else {}),
        **({"predictor_hidden_dim": 32} if method in ("byol", "simsiam") else {}),
    }
    learner = build_method(method, backbone, None, **options)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    optimizer = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=0.05)
    before = [p.detach().clone() for p in backbone.parameters()]
    images = torch.randn(8, 1, 16, 16)
    for step in range(2):
        learner.set_progress(step, 2.0 + step)  # past SwAV's and DINO's frozen first epoch
        loss = learner(images, images.flip(-1) + 0.1 * torch.randn_like(images))
        optimizer.zero_grad()
        loss.backward()
        learner.before_optimizer_step()
        optimizer.step()
        learner.update_target(0.9)
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, backbone.parameters()))


def test_sync_batchnorm_keeps_timms_fused_activation_and_the_state_dict_keys():
    model = timm.create_model("mobilenetv3_small_050", num_classes=0).train()
    reference = timm.create_model("mobilenetv3_small_050", num_classes=0).train()
    reference.load_state_dict(model.state_dict())
    keys = model.state_dict().keys()
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert any(isinstance(m, SyncBatchNormAct) for m in converted.modules())
    assert converted.state_dict().keys() == keys
    images = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(converted(images), reference(images))  # one process: plain batch norm + activation


def test_a_layernorm_backbone_passes_through_sync_batchnorm_conversion_unchanged():
    vit = _layer_norm_vit()
    types_before = [type(m) for m in vit.modules()]
    assert [type(m) for m in convert_sync_batchnorm(vit, torch.device("cpu")).modules()] == types_before


def test_zoo_lists_torchvisions_models():
    names = zoo.torchvision_names()
    assert {"resnet18", "vit_b_16", "convnext_tiny", "mobilenet_v3_small"} <= set(names)


# ---------------------------------------------------------------- from the command line


def _byol(*args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "byol", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


SHORT = [
    "--subset",
    "64",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--knn-bank",
    "64",
    "--knn-test",
    "32",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--no-tensorboard",
]


@pytest.mark.parametrize(
    "backbone, export_format",
    [("timm:vit_tiny_patch16_224", "timm"), ("torchvision:mobilenet_v3_small", "torchvision")],
)
def test_a_library_backbone_trains_evaluates_and_exports_from_the_cli(tmp_path, fashion_dir, backbone, export_format):
    out = tmp_path / "run"
    result = _byol(
        "train",
        "--preset",
        "smoke",
        "--backbone",
        backbone,
        "--image-size",
        "32",
        "--data",
        str(fashion_dir),
        "--out",
        str(out),
        *SHORT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    encoder = byol.load_encoder(out / "backbone.safetensors")
    assert encoder.encoder_info.backbone == backbone and encoder.encoder_info.in_channels == 1
    assert encoder(torch.zeros(2, 1, 32, 32)).shape == (2, encoder.encoder_info.feature_dim)
    evaluated = _byol(
        "eval",
        "--checkpoint",
        str(out / "checkpoint.pt"),
        "--data",
        str(fashion_dir),
        "--protocol",
        "knn",
        "--no-baselines",
        "--json",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0 <= json.loads(evaluated.stdout)["knn_top1"] <= 100
    exported = _byol(
        "export",
        "--checkpoint",
        str(out / "checkpoint.pt"),
        "--out",
        str(tmp_path / "e.safetensors"),
        "--format",
        export_format,
    )
    if export_format == "torchvision":  # Fashion-MNIST is grey: torchvision's classes take RGB only
        assert exported.returncode == 2 and "3-channel" in exported.stderr
    else:
        assert exported.returncode == 0, exported.stderr
        assert "in_chans=1, img_size=32, patch_size=4" in json.loads(exported.stdout)["load"]


def test_resnet_only_options_are_refused_for_a_library_model_in_one_line(tmp_path):
    result = _byol("train", "--backbone", "timm:resnet18", "--norm", "group-ws", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--backbone timm:resnet18: --norm group-ws applies to the resnet18/34/50 backbones" in result.stderr
    unknown = _byol("train", "--backbone", "timm:vit_tiny_patch16", "--out", str(tmp_path / "y"))
    assert (
        unknown.returncode == 2 and "did you mean" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    )


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_the_issues_vit_command_runs_on_the_cpu(tmp_path):
    """`byol train --backbone timm:vit_tiny_patch16_224 --image-size 32 --preset smoke` (about a minute)."""
    result = _byol(
        "train",
        "--backbone",
        "timm:vit_tiny_patch16_224",
        "--image-size",
        "32",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "vit"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "vit" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "loss" in r][-1]["step"] == 16


def test_timm_vits_take_multi_crops_smaller_local_views_and_torchvisions_are_refused_in_one_line():
    from byol.runtime.errors import UserError
    from byol.training.trainer import check_input_size

    vit = build_backbone("timm:vit_tiny_patch16_224", image_size=32)
    assert vit(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # dynamic image size: position embeddings interpolated
    check_input_size(vit, 3, 14, "timm:vit_tiny_patch16_224")  # 14 px: padded to a multiple of the 4 px patch
    fixed = build_backbone("torchvision:vit_b_32", image_size=64)
    with pytest.raises(UserError, match="--local-crops: torchvision:vit_b_32 does not take the 32 px local crops"):
        check_input_size(fixed, 3, 32, "torchvision:vit_b_32")
    assert fixed.training  # the check leaves the mode as it found it


def test_dino_with_local_crops_trains_a_timm_vit_from_the_cli(tmp_path, fashion_dir):
    result = _byol(
        "train",
        "--preset",
        "smoke",
        "--method",
        "dino",
        "--backbone",
        "timm:vit_tiny_patch16_224",
        "--image-size",
        "32",
        "--local-crops",
        "2",
        "--prototypes",
        "64",
        "--knn-every",
        "0",
        "--data",
        str(fashion_dir),
        "--out",
        str(tmp_path / "dino"),
        *SHORT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "dino" / "backbone.safetensors").exists()
