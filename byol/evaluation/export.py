"""A trained encoder out of byol and back in.

`load_encoder(path)` rebuilds the encoder from `checkpoint.pt`, `backbone.safetensors` or a safetensors
export. `export_encoder` writes it for whoever uses it next:
- `safetensors`: byol's own file (weights + the metadata `load_encoder`, `byol eval` and `byol embed` need);
- `torchvision` / `timm`: the state_dict of the original class (`torchvision.models.resnet18()`,
  `timm.create_model(...)`) so that `load_state_dict(..., strict=True)` takes it as it is. torchvision's
  classes have a classifier the encoder never trained: it is written at the class's own initialisation
  and its keys are reported, so nobody mistakes it for trained weights;
- `onnx`: the encoder as an ONNX graph with a dynamic batch, run through onnxruntime (when installed)
  against PyTorch before it is kept.
Every safetensors export keeps byol's metadata, so `load_encoder` reads all three back.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from byol.models import zoo
from byol.models.backbones import ARCHITECTURES, build_backbone, resolve_stem
from byol.runtime.checkpoint import ENCODER_FORMAT, EncoderInfo, TrainingState, atomic_write, load_weights, save_weights
from byol.runtime.errors import UserError
from byol.training.run_dir import RunDir

FORMATS = ("safetensors", "torchvision", "timm", "onnx")
ONNX_TOLERANCE = 1e-3  # largest |onnxruntime − PyTorch| accepted, relative to the features' largest magnitude


def load_encoder(path: str | Path) -> nn.Module:
    """The trained encoder, in eval mode, from a `checkpoint.pt`, a `backbone.safetensors` or a safetensors
    export: images (B, C, H, W), normalised with `encoder.encoder_info.mean`/`std`, to features (B, D).
    `encoder.encoder_info` says what it was trained on (backbone, image size, channels, normalisation)."""
    encoder, info = read_encoder(path)
    encoder.encoder_info = info
    return encoder.eval()


def read_encoder(path: str | Path) -> tuple[nn.Module, EncoderInfo]:
    """The online encoder (train mode) and its EncoderInfo, from a file or a run folder; one-line UserErrors
    for anything else."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).trained_encoder()
    if path.suffix == ".onnx":
        raise UserError(f"{path}: an ONNX graph runs in onnxruntime; load_encoder reads checkpoint.pt or .safetensors")
    if path.suffix == ".safetensors":
        state = load_weights(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != ENCODER_FORMAT:
            raise UserError(f"{path}: no byol encoder metadata (was it written by `byol train` or `byol export`?)")
        info = EncoderInfo.from_metadata(meta)
        for key in json.loads(meta.get("untrained_head", "[]")):  # a torchvision export's classifier
            state.pop(key, None)
    else:
        checkpoint = TrainingState.load(path)
        state, info = checkpoint.encoder_weights(), EncoderInfo.from_dict(checkpoint.encoder_info)
    try:
        encoder = build_backbone(info.backbone, info.width, info.image_size, info.in_channels, info.stem, info.norm)
        encoder.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"{path}: weights do not fit a {info.backbone} ({str(error).splitlines()[0]})") from None
    return encoder, info


def format_for(out: str | Path, format: str | None) -> str:
    """The export format: as given, else `onnx` for a `.onnx` file and `safetensors` otherwise."""
    if format is None:
        return "onnx" if Path(out).suffix == ".onnx" else "safetensors"
    if format not in FORMATS:
        raise UserError(f"--format: unknown format '{format}'; choose from {', '.join(FORMATS)}")
    return format


def export_encoder(checkpoint: str | Path, out: str | Path, format: str | None = None) -> dict:
    """Write the encoder of `checkpoint` (any file `load_encoder` reads) to `out`; returns what was written
    and how to load it."""
    format = format_for(out, format)
    encoder, info = read_encoder(checkpoint)
    out = Path(out)
    report = {"out": str(out), "format": format, "backbone": info.backbone, "feature_dim": info.feature_dim}
    if format == "onnx":
        return {**report, **_export_onnx(encoder.eval(), info, out)}
    state, metadata = encoder.state_dict(), info.to_metadata()
    if format == "safetensors":
        save_weights(out, state, metadata)
        return {**report, "load": f"byol.load_encoder({str(out)!r})"}
    target, call = original_model(info, format)
    head = {k: v for k, v in target.state_dict().items() if k not in state}
    try:  # the promise made to the user, checked before anything is written
        target.load_state_dict({**state, **head}, strict=True)
    except RuntimeError as error:
        raise UserError(
            f"{checkpoint}: the encoder does not fit {call} ({str(error).splitlines()[1].strip()[:160]})"
        ) from None
    save_weights(out, {**state, **head}, {**metadata, "untrained_head": json.dumps(sorted(head))})
    return {
        **report,
        "untrained_head": sorted(head),
        "load": f"model = {call}; model.load_state_dict(safetensors.torch.load_file({str(out)!r}), strict=True)",
    }


def original_model(info: EncoderInfo, library: str) -> tuple[nn.Module, str]:
    """The `library`'s own class for this encoder, untrained, and the call that builds it; a UserError
    when that class cannot hold the encoder (a width or stem of ours, GroupNorm, a channel count)."""
    if info.backbone in ARCHITECTURES:
        stem = resolve_stem(info.stem, info.image_size)
        if info.width != 1.0 or stem != "imagenet" or info.norm != "batch":
            raise UserError(
                f"--format {library}: {info.backbone} at width {info.width:g} with the {stem} stem and "
                f"{info.norm} norm is byol's own variant; {library}'s class is width 1, imagenet stem, "
                "batch norm (--width 1 --stem imagenet to train one); --format safetensors or onnx"
            )
        if library == "torchvision":
            return _torchvision_resnet(info), f"torchvision.models.{info.backbone}()"
        return zoo.original(f"timm:{info.backbone}", info.image_size, info.in_channels)
    own = info.backbone.partition(":")[0]
    if own != library:
        raise UserError(f"--format {library}: {info.backbone} is a {own} model; use --format {own}")
    if library == "torchvision" and info.in_channels != 3:
        raise UserError(
            f"--format torchvision: torchvision's classes take 3-channel images and this encoder takes "
            f"{info.in_channels}; --format safetensors or onnx"
        )
    reason = zoo.problem(info.backbone)
    if reason:
        raise UserError(f"--format {library}: {reason}")
    return zoo.original(info.backbone, info.image_size, info.in_channels)


def _torchvision_resnet(info: EncoderInfo) -> nn.Module:
    if info.in_channels != 3:
        raise UserError(
            f"--format torchvision: torchvision's {info.backbone} takes 3-channel images and this encoder "
            f"takes {info.in_channels}; --format timm (in_chans) or safetensors"
        )
    from torchvision import models  # over a second to import: only for this format

    return getattr(models, info.backbone)()


def _export_onnx(encoder: nn.Module, info: EncoderInfo, out: Path) -> dict:
    if importlib.util.find_spec("onnxscript") is None:
        raise UserError("--format onnx needs the onnx exporter: pip install 'byol[onnx]' (onnx, onnxscript)")
    example = torch.randn(
        2, info.in_channels, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = encoder(example)
    with tempfile.TemporaryDirectory() as scratch:
        graph = Path(scratch) / "encoder.onnx"
        try:
            program = torch.onnx.export(
                encoder,
                (example,),
                dynamo=True,
                verbose=False,
                input_names=["images"],
                output_names=["features"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
            program.save(str(graph))
        except Exception as error:
            raise UserError(f"{info.backbone}: torch.onnx.export failed ({str(error).splitlines()[0][:200]})") from None
        checked = _check_onnx(graph, example, expected)
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(graph.read_bytes()))
    return {
        "input": ["batch", info.in_channels, info.image_size, info.image_size],
        **checked,
        "mean": list(info.mean),
        "std": list(info.std),
    }


def _check_onnx(graph: Path, example: torch.Tensor, expected: torch.Tensor) -> dict:
    """Run the graph in onnxruntime on the example batch; refuse it when it disagrees with PyTorch."""
    if importlib.util.find_spec("onnxruntime") is None:
        return {"onnxruntime_checked": False}
    import onnxruntime  # optional: imported only when installed

    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": example.numpy()})
    difference = float((torch.from_numpy(got) - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if difference > ONNX_TOLERANCE * scale:
        raise UserError(
            f"{graph.name}: onnxruntime differs from PyTorch by {difference:.3g} (features up to "
            f"{scale:.3g}); not written"
        )
    return {"onnxruntime_checked": True, "onnxruntime_max_abs_diff": difference}
