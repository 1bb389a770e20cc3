"""A trained encoder out and back in: load_encoder from every file byol writes, exports that load into the
original torchvision/timm class with strict=True, ONNX checked with onnxruntime."""

import importlib.util
import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch
import torchvision

import byol
from byol.evaluation import export
from byol.models.backbones import build_backbone
from byol.runtime.checkpoint import EncoderInfo, TrainingState, save_weights
from byol.runtime.errors import UserError

timm = pytest.importorskip("timm")


def _encoder_files(tmp_path, backbone="resnet18", width=1.0, image_size=64, channels=3, stem="auto"):
    """A backbone.safetensors and a checkpoint.pt holding the same (random, BN-statistics-moved) encoder."""
    torch.manual_seed(0)
    encoder = build_backbone(backbone, width, image_size, channels, stem)
    encoder.train()(torch.randn(4, channels, image_size, image_size))  # running statistics away from 0 and 1
    info = EncoderInfo(
        backbone,
        1.0 if ":" in backbone else width,
        channels,
        image_size,
        encoder.feature_dim,
        "folder",
        (0.5,) * channels,
        (0.25,) * channels,
        stem,
    )
    weights = tmp_path / "backbone.safetensors"
    save_weights(weights, encoder.state_dict(), info.to_metadata())
    checkpoint = tmp_path / "checkpoint.pt"
    model = {f"online_encoder.{k}": v for k, v in encoder.state_dict().items()}
    TrainingState(step=3, config={}, model=model, optimizer={}, encoder_info=info.to_dict()).save(checkpoint)
    return encoder.eval(), weights, checkpoint


def _same_features(a, b, channels=3, size=64):
    images = torch.randn(3, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(images), b.eval()(images))


def test_load_encoder_reads_the_checkpoint_and_the_weights_file_in_eval_mode(tmp_path):
    encoder, weights, checkpoint = _encoder_files(tmp_path, width=0.25, image_size=32, channels=1)
    for path in (weights, checkpoint):
        loaded = byol.load_encoder(path)
        assert not loaded.training and loaded.encoder_info.in_channels == 1
        assert loaded.encoder_info.mean == (0.5,) and loaded.encoder_info.image_size == 32
        _same_features(loaded, encoder, channels=1, size=32)


def test_load_encoder_takes_a_run_folder_preferring_the_finished_encoder(tmp_path):
    encoder, weights, checkpoint = _encoder_files(tmp_path, width=0.25, image_size=32, channels=1)
    save_weights(
        weights,
        {k: torch.zeros_like(v) for k, v in encoder.state_dict().items()},
        byol.load_encoder(weights).encoder_info.to_metadata(),
    )  # tells the two files apart
    assert all(not v.any() for v in byol.load_encoder(tmp_path).state_dict().values())
    weights.unlink()  # a run stopped before its end has only the checkpoint
    _same_features(byol.load_encoder(tmp_path), encoder, channels=1, size=32)
    checkpoint.unlink()
    with pytest.raises(UserError, match="neither backbone.safetensors nor checkpoint.pt"):
        byol.load_encoder(tmp_path)


def test_load_encoder_refuses_what_it_cannot_read_in_one_line(tmp_path):
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(plain))
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    for path, words in (
        (plain, "no byol encoder metadata"),
        (tmp_path / "m.onnx", "runs in onnxruntime"),
        (tmp_path / "missing.pt", "no such checkpoint"),
    ):
        with pytest.raises(UserError, match=words):
            byol.load_encoder(path)


def _run_load_line(report):
    """The `load` line the export prints, run as a user would paste it."""
    scope = {"torchvision": torchvision, "timm": timm, "safetensors": safetensors, "byol": byol}
    # our own printed instruction, run as a user would paste it
    exec(report["load"], scope)
    return scope["model"]


def test_torchvision_export_loads_strictly_into_torchvisions_resnet(tmp_path):
    encoder, weights, _ = _encoder_files(tmp_path, stem="imagenet")
    report = byol.export_encoder(weights, tmp_path / "tv.safetensors", "torchvision")
    assert report["untrained_head"] == ["fc.bias", "fc.weight"]
    model = _run_load_line(report)
    assert type(model) is torchvision.models.ResNet
    model.fc = torch.nn.Identity()
    _same_features(model, encoder)
    _same_features(byol.load_encoder(tmp_path / "tv.safetensors"), encoder)  # the head is dropped on the way back


def test_torchvision_export_of_a_torchvision_model_by_name(tmp_path):
    encoder, weights, _ = _encoder_files(tmp_path, "torchvision:mobilenet_v3_small")
    report = byol.export_encoder(weights, tmp_path / "tv.safetensors", "torchvision")
    assert report["untrained_head"] == ["classifier.3.bias", "classifier.3.weight"]
    model = _run_load_line(report)
    model.classifier[3] = torch.nn.Identity()
    _same_features(model, encoder)


@pytest.mark.parametrize("backbone, channels, size", [("resnet18", 1, 64), ("timm:vit_tiny_patch16_224", 3, 32)])
def test_timm_export_loads_strictly_into_timm_create_model(tmp_path, backbone, channels, size):
    encoder, _, checkpoint = _encoder_files(tmp_path, backbone, image_size=size, channels=channels, stem="imagenet")
    report = byol.export_encoder(checkpoint, tmp_path / "timm.safetensors", "timm")
    assert report["untrained_head"] == []  # timm builds num_classes=0 without a head
    _same_features(_run_load_line(report), encoder, channels, size)
    # timm's own loader takes the file as "pretrained" weights too
    call = report["load"].split(";")[0].removeprefix("model = ").removesuffix(")")
    overlay = eval(
        call + f", pretrained=True, pretrained_cfg_overlay=dict(file={str(tmp_path / 'timm.safetensors')!r}))",
        {"timm": timm},
    )
    _same_features(overlay, encoder, channels, size)


@pytest.mark.parametrize(
    "files, fmt, words",
    [
        ({"width": 0.5, "stem": "imagenet"}, "torchvision", "resnet18 at width 0.5 with the imagenet stem"),
        ({"image_size": 32}, "timm", "with the cifar stem"),
        ({"channels": 1, "stem": "imagenet"}, "torchvision", "takes 3-channel images and this encoder takes 1"),
        ({"backbone": "timm:resnet18"}, "torchvision", "timm:resnet18 is a timm model; use --format timm"),
        ({"backbone": "torchvision:resnet18"}, "timm", "is a torchvision model; use --format torchvision"),
    ],
)
def test_exports_the_original_class_cannot_hold_are_refused_in_one_line(tmp_path, files, fmt, words):
    _, weights, _ = _encoder_files(tmp_path, **files)
    with pytest.raises(UserError, match=words) as error:
        byol.export_encoder(weights, tmp_path / "out.safetensors", fmt)
    assert "\n" not in str(error.value) and not (tmp_path / "out.safetensors").exists()


needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnxscript") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs byol[onnx]",
)


@needs_onnx
@pytest.mark.parametrize("backbone, channels", [("resnet18", 1), ("timm:vit_tiny_patch16_224", 3)])
def test_onnx_export_matches_pytorch_in_onnxruntime_at_another_batch_size(tmp_path, backbone, channels):
    import onnxruntime

    encoder, _, checkpoint = _encoder_files(tmp_path, backbone, width=0.25, image_size=32, channels=channels)
    report = byol.export_encoder(checkpoint, tmp_path / "encoder.onnx")  # the format from the suffix
    assert report["format"] == "onnx" and report["onnxruntime_checked"]
    assert report["onnxruntime_max_abs_diff"] < 1e-3
    session = onnxruntime.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(5, channels, 32, 32)
    (features,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(features), encoder(images), rtol=1e-3, atol=1e-4)


def test_onnx_without_the_exporter_says_which_extra_to_install(tmp_path, monkeypatch):
    _, weights, _ = _encoder_files(tmp_path, width=0.25, image_size=32, channels=1)
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'byol\[onnx\]'"):
        byol.export_encoder(weights, tmp_path / "e.onnx")


def test_export_command_prints_what_it_wrote_and_how_to_load_it(tmp_path):
    _, weights, _ = _encoder_files(tmp_path, stem="imagenet")
    out = tmp_path / "tv.safetensors"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "byol",
            "export",
            "--checkpoint",
            str(weights),
            "--out",
            str(out),
            "--format",
            "torchvision",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["format"] == "torchvision" and report["load"].startswith("model = torchvision.models.resnet18()")
    bad = subprocess.run(
        [sys.executable, "-m", "byol", "export", "--checkpoint", str(weights), "--out", str(out), "--format", "keras"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--format" in bad.stderr
