"""DDP on CPU with gloo: two ranks with half the batch each are one process with the whole batch, and
torchrun runs resume, from a checkpoint or after a killed worker, to the uninterrupted result."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from byol.models.syncbn import SyncBatchNorm, convert_sync_batchnorm
from byol.runtime.checkpoint import load_checkpoint
from byol.runtime.distributed import all_reduce_mean, gather, rank_and_world, sum_over_ranks, unwrap, wrap
from byol.training.config import TrainConfig
from byol.training.trainer import build_learner, optimizer_for, training_step

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(width=0.125, projection_dim=16, projector_hidden_dim=32, predictor_hidden_dim=32, weight_decay=1e-4)


class FixedViews(torch.nn.Module):
    """A deterministic 'augmentation', so both runs see the same views of the same images; with
    `local_crops`, that many half-size crops as well (multi-crop)."""

    def __init__(self, local_crops: int = 0):
        super().__init__()
        self.local_crops = local_crops

    def forward(self, images):
        local = [images[..., i : i + 8, i : i + 8] * (1 + 0.1 * i) for i in range(self.local_crops)]
        return (images, images.flip(-1) * 0.5 + 0.1, *local)


def _in_ranks(world_size: int, tmp_path: Path, target, *args) -> list:
    """Run target(*args) in `world_size` gloo processes; return what each rank returned (rank order)."""
    mp.start_processes(
        _rank_main, args=(world_size, str(tmp_path), target, args), nprocs=world_size, start_method="spawn"
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def _rank_main(rank, world_size, directory, target, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/rendezvous", rank=rank, world_size=world_size)
    try:
        torch.save(target(*args), f"{directory}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _smooth(module: torch.nn.Module) -> torch.nn.Module:
    """ReLU → SiLU and max → average pooling, in place, so that two steps are a smooth function of round-off.

    At a ReLU's kink the gradient jumps: a pre-activation within float32 round-off of 0 takes one side in one
    process and the other in two ranks, or under another CPU's kernels. Barlow Twins had one 4e-7 from 0 in
    step 2 (in float64); which side float32 put it on moved bn1.weight by 6.5e-4, so no tolerance drawn
    from float32's precision could hold. A max-pooling tie is the same. What the test compares, statistics
    and gradients synchronised across ranks, does not depend on the activation."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ReLU):
                setattr(parent, name, torch.nn.SiLU())
            elif isinstance(child, torch.nn.MaxPool2d):
                setattr(parent, name, torch.nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    return module


def _two_steps(overrides: dict, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict:
    """Two LARS steps of the real training step on this rank's slice of `images`, in `dtype`."""
    rank, world = rank_and_world()
    cfg = TrainConfig(**{**TINY, **overrides})
    torch.manual_seed(0)
    learner = _smooth(build_learner(cfg, channels=1, image_size=16))
    if world > 1:
        learner = convert_sync_batchnorm(learner, torch.device("cpu"))
    learner = learner.to(dtype)
    optimizer = optimizer_for(cfg, learner)
    for group in optimizer.param_groups:
        # large enough to move every weight, small enough not to amplify round-off (Barlow Twins' gradients
        # are ~80× BYOL's at this size: it takes its own, smaller LR)
        group["lr"] = overrides.get("lr", 0.05)
    model = wrap(learner, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    local = images.to(dtype).chunk(world)[rank]
    losses = []
    views = FixedViews(cfg.local_crops)
    for step in range(2):
        learner.set_progress(step, float(step))
        loss, _ = training_step(model, views, optimizer, scaler, local, tau=0.9)
        losses.append(all_reduce_mean(loss.detach()))
    return {"losses": torch.stack(losses), "state": unwrap(model).state_dict()}


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, marks=pytest.mark.isa),  # BYOL
        {"negatives_beta": 0.5},  # negatives from the other rank's images too
        {"method": "mocov2", "queue_size": 16},  # the queue takes every rank's keys: the same on both ranks
        {"method": "swav", "prototypes": 20, "local_crops": 2},  # Sinkhorn's prototype marginals over both ranks
        {"method": "dino", "prototypes": 20, "local_crops": 2},  # the centre from both ranks' teacher outputs
        # cross-correlation of the global batch, autograd through the gather
        pytest.param({"method": "barlowtwins", "lr": 0.001}, marks=pytest.mark.isa),
        {"method": "vicreg"},  # variance and covariance of the global batch
        {"method": "simclr"},
        {"backbone": "timm:vit_tiny_patch16_224"},  # LayerNorm only: nothing to synchronise but the gradients
        {"backbone": "torchvision:resnet18"},  # a library's batch norms, synchronised (no dropout to differ by)
    ],
    ids=[
        "byol",
        "byol-negatives",
        "mocov2",
        "swav",
        "dino",
        "barlowtwins",
        "vicreg",
        "simclr",
        "timm-vit",
        "torchvision-resnet18",
    ],
)
def test_two_ranks_with_sync_bn_equal_one_process_with_the_whole_batch(tmp_path, overrides):
    """Both float32 runs against the same two steps in float64 in one process: the two ranks must be about as
    close to float64 as one process is. How close that is depends on the CPU's kernels (a fixed 1e-4 of each
    tensor's scale, tuned on one CPU, failed on another), so each result (losses, parameters of every network,
    batch-norm running statistics) may be 4× as far from float64 as the single process's, and at least
    4 × 16 float32 epsilons of its largest value: the composite SyncBatchNorm sums its statistics in float32,
    less accurately than torch's batch norm. Measured under the oneDNN and ATen ISAs of scripts/isa_matrix.sh:
    at most 2.5× the single process's distance, and 36 epsilons where that distance was below the floor.
    Mutations this catches: the statistics not all-reduced, their backward's or the gather's gradient × 1.01,
    the synchronised variance × (1 + 1e-5)."""
    images = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    exact = _two_steps(overrides, images, torch.float64)
    single = _two_steps(overrides, images)
    ranks = _in_ranks(2, tmp_path, _two_steps, overrides, images)
    single_values = {"losses": single["losses"], **single["state"]}

    def check(name: str, value: torch.Tensor, reference: torch.Tensor):
        if not reference.is_floating_point():
            assert torch.equal(value, reference), name  # num_batches_tracked, the queue's pointer
            return
        scale = reference.abs().max()
        own = (single_values[name].double() - reference).abs().max()
        error = (value.double() - reference).abs().max()
        bound = 4 * max(own, 16 * torch.finfo(torch.float32).eps * scale)
        assert error <= bound, (name, float(error), float(own), float(scale))

    for result in ranks:
        assert result["state"].keys() == single["state"].keys() == exact["state"].keys()
        check("losses", result["losses"], exact["losses"])
        for name, reference in exact["state"].items():
            check(name, result["state"][name], reference)
    # the weights moved, so equality above is not equality of two untouched initialisations
    torch.manual_seed(0)
    initial = build_learner(TrainConfig(**{**TINY, **overrides}), channels=1, image_size=16).state_dict()
    first = next(k for k in initial if k.startswith("online_encoder.") and k.endswith("weight"))
    assert not torch.equal(initial[first], single["state"][first])


class FusedKernelsOnTheCpu:
    """Stand-ins for torch's CUDA-only fused batch-norm kernels and NCCL's all_gather_into_tensor, written from
    what they compute, so the glue of byol's fused SyncBatchNorm path (arguments, shapes, the backward's
    all-reduce) runs over gloo ranks. tests/test_cuda.py runs the real kernels on a GPU."""

    @staticmethod
    def install():
        dims = [0, 2, 3]

        def stats(x, eps):
            mean = x.mean(dims)
            return mean, (x.var(dims, unbiased=False) + eps).rsqrt()

        def gather_stats(x, means, invstds, running_mean, running_var, momentum, eps, counts):
            total = counts.sum()
            mean = (means * counts[:, None]).sum(0) / total
            variances = invstds.pow(-2) - eps
            var = (counts[:, None] * (variances + (means - mean) ** 2)).sum(0) / total
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
                running_var.mul_(1 - momentum).add_(var * total / (total - 1), alpha=momentum)
            return mean, (var + eps).rsqrt()

        def shape(t):
            return t.view(1, -1, 1, 1)

        def elemt(x, weight, bias, mean, invstd, eps):
            return (x - shape(mean)) * shape(invstd) * shape(weight) + shape(bias)

        def backward_reduce(dy, x, mean, invstd, weight, input_g, weight_g, bias_g):
            sum_dy, sum_dy_xmu = dy.sum(dims), (dy * (x - shape(mean))).sum(dims)
            return sum_dy, sum_dy_xmu, sum_dy_xmu * invstd if weight_g else None, sum_dy if bias_g else None

        def backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, counts):
            total = counts.sum().to(dy.dtype)
            xhat = (x - shape(mean)) * shape(invstd)
            return (dy - shape(sum_dy) / total - xhat * shape(invstd * sum_dy_xmu) / total) * shape(invstd * weight)

        def all_gather_into_tensor(output, tensor):
            parts = list(output.chunk(dist.get_world_size()))
            gathered = [torch.empty_like(part.reshape(tensor.shape)) for part in parts]
            dist.all_gather(gathered, tensor)
            output.copy_(torch.stack(gathered).view_as(output))

        torch.batch_norm_stats, torch.batch_norm_gather_stats_with_counts = stats, gather_stats
        torch.batch_norm_elemt, torch.batch_norm_backward_reduce = elemt, backward_reduce
        torch.batch_norm_backward_elemt, dist.all_gather_into_tensor = backward_elemt, all_gather_into_tensor
        SyncBatchNorm._fused_applies = lambda self, x: self.kernels == "fused"


def _sync_bn_gradients(x: torch.Tensor, implementation: str = "byol") -> dict:
    rank, world = dist.get_rank(), dist.get_world_size()
    if implementation == "fused":
        FusedKernelsOnTheCpu.install()  # in this spawned rank only
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(torch.nn.BatchNorm2d(3), torch.device("cpu"), implementation)
    assert isinstance(bn, SyncBatchNorm)
    local = x.chunk(world)[rank].clone().requires_grad_(True)
    weights = torch.arange(local.numel(), dtype=torch.float32).view_as(local) + rank * local.numel()
    # the loss of the global batch is the sum over ranks of each rank's part
    (bn(local) * weights).sum().backward()
    gathered, offset = gather(local.detach())
    return {
        "grad": local.grad,
        "weight_grad": sum_over_ranks(bn.weight.grad),
        "offset": torch.tensor(offset),
        "gathered": gathered,
        "running_var": bn.running_var,
    }


@pytest.mark.parametrize("implementation", ["byol", "fused"])
def test_sync_batchnorm_gradients_and_statistics_are_those_of_the_global_batch(tmp_path, implementation):
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 3 + 5  # far from the zero shift
    reference = torch.nn.BatchNorm2d(3)
    full = x.clone().requires_grad_(True)
    weights = torch.arange(full.numel(), dtype=torch.float32).view_as(full)
    (reference(full) * weights).sum().backward()

    ranks = _in_ranks(2, tmp_path, _sync_bn_gradients, x, implementation)
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), full.grad, rtol=1e-4, atol=1e-4)
    for r, result in enumerate(ranks):
        torch.testing.assert_close(result["weight_grad"], reference.weight.grad, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(result["running_var"], reference.running_var)
        torch.testing.assert_close(result["gathered"], x)
        assert int(result["offset"]) == r * 3


def test_sync_batchnorm_implementations_are_chosen_by_name():
    """ "fused" marks our layers for torch's fused CUDA kernels (tests/test_cuda.py runs them); on CPU tensors
    they take the composite path."""
    fused = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"), "fused")
    assert isinstance(fused[0], SyncBatchNorm) and fused[0].kernels == "fused"
    assert convert_sync_batchnorm(torch.nn.BatchNorm2d(3), torch.device("cpu")).kernels == "composite"
    with pytest.raises(ValueError, match="unknown SyncBatchNorm implementation 'apex'"):
        convert_sync_batchnorm(torch.nn.BatchNorm2d(3), torch.device("cpu"), "apex")
    with pytest.raises(ValueError, match="CUDA only"):
        convert_sync_batchnorm(torch.nn.BatchNorm2d(3), torch.device("cpu"), "torch")


def test_batch_that_does_not_split_over_ranks_is_refused():
    from byol.data.datasets import BatchStream, ImageDataset
    from byol.runtime.errors import UserError

    data = ImageDataset("x", 1, 8, (0.5,), (0.5,), images=torch.zeros(12, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(UserError, match="--batch-size 6 does not split evenly over 4"):
        BatchStream(data, 6, rank=0, world_size=4)
    slices = [torch.cat([b for b, _ in BatchStream(data, 6, rank=r, world_size=2).epoch(0, 0)]) for r in range(2)]
    assert len(slices[0]) == len(slices[1]) == 6  # two global batches of 6, 3 images per rank each


# ---------------------------------------------------------------- torchrun end to end

# A tiny run on the synthetic Fashion-MNIST-format data: 16 steps, a checkpoint every 4.
RUN = [
    "--preset",
    "smoke",
    "--subset",
    "256",
    "--batch-size",
    "32",
    "--epochs",
    "2",
    "--checkpoint-every",
    "4",
    "--knn-bank",
    "128",
    "--knn-test",
    "64",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--no-tensorboard",
]


def torchrun(out: Path, data: Path, *extra: str, max_restarts: int = 0, env: dict | None = None):
    # --standalone: a fresh rendezvous round per restart (the static one can hand out stale addresses)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--max-restarts",
        str(max_restarts),
        "--monitor-interval",
        "0.2",
        "-m",
        "byol",
        "train",
        *RUN,
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=600)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from tests.conftest import make_fashion_like

    root = tmp_path_factory.mktemp("torchrun")
    data = make_fashion_like(root / "fashion")
    out = root / "straight"
    result = torchrun(out, data)
    assert result.returncode == 0, result.stderr[-3000:]
    return data, out, load_file(str(out / "backbone.safetensors"))


def test_torchrun_run_records_world_size_and_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted):
    data, straight, weights = uninterrupted
    records = _metrics(straight)
    assert {r["world_size"] for r in records if "loss" in r} == {2}
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})
    assert any("knn_top1" in r for r in records) and any("probe_top1" in r for r in records)
    resolved = (straight / "config.yaml").read_text()
    assert "world_size: 2" in resolved and "batch_per_process: 16" in resolved and "sync_bn: true" in resolved

    out = tmp_path / "resumed"
    first = torchrun(out, data, "--stop-after-steps", "6")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (out / "backbone.safetensors").exists()
    second = torchrun(out, data, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr and "at step 6/16" in second.stderr
    assert second.stderr.count("resuming") == 1  # rank 0 speaks for the job
    resumed = load_file(str(out / "backbone.safetensors"))
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert [r["step"] for r in _metrics(out)] == [r["step"] for r in records]


def test_swav_resumes_each_ranks_own_queue_to_the_uninterrupted_weights(tmp_path, uninterrupted):
    """SwAV's queue is each rank's own; the checkpoint gathers them and each rank takes its own back."""
    data = uninterrupted[0]
    swav = [
        "--method",
        "swav",
        "--queue-size",
        "64",
        "--queue-start-epoch",
        "0",
        "--prototypes",
        "64",
        "--subset",
        "128",
        "--knn-every",
        "0",
    ]  # 8 steps; 2 × 16-image batches fill each rank's 32
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    for run in ((straight, *swav), (out, *swav, "--stop-after-steps", "3"), (out, *swav, "--resume")):
        result = torchrun(run[0], data, *run[1:])
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = (load_checkpoint(run / "checkpoint.pt")["model"] for run in (straight, out))
    assert a["queue"].shape[0] == 2 and not torch.equal(a["queue"][0], a["queue"][1])  # one queue per rank
    assert all(torch.equal(a[key], b[key]) for key in a)


KILLER = """
# Test fault injection: on the first attempt, rank 1 dies with SIGKILL as it starts step {step}.
import os
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    import signal
    import byol.training.trainer

    real_step, calls = byol.training.trainer.training_step, [0]

    def training_step(*args, **kwargs):
        if calls[0] == {step}:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        return real_step(*args, **kwargs)

    byol.training.trainer.training_step = training_step
"""


def test_killed_worker_restarts_from_the_last_checkpoint_to_the_uninterrupted_weights(tmp_path, uninterrupted):
    data, straight, weights = uninterrupted
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(KILLER.format(step=6)))
    out = tmp_path / "killed"
    result = torchrun(out, data, max_restarts=1, env={"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"})
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 1 died at step 6; the last checkpoint was step 4, written before step 5 could complete
    assert "restart 1 after a failed worker" in result.stderr
    assert "at step 4/16" in result.stderr
    assert json.loads((out / "summary.json").read_text())["finished"]
    killed = load_file(str(out / "backbone.safetensors"))
    assert all(torch.equal(killed[k], weights[k]) for k in weights)
    assert [r["step"] for r in _metrics(out)] == [r["step"] for r in _metrics(straight)]


def test_rank_zero_decides_and_a_user_error_reaches_every_rank_as_itself():
    from byol.runtime.distributed import Context
    from byol.runtime.errors import UserError

    assert Context().main_decides(lambda: 42) == 42

    def refuse():
        raise UserError("runs/x/checkpoint.pt exists")

    with pytest.raises(UserError, match="checkpoint.pt exists"):
        Context().main_decides(refuse)


def test_a_timm_vit_and_a_torchvision_model_train_under_torchrun(tmp_path, uninterrupted):
    data = uninterrupted[0]
    for backbone in ("timm:vit_tiny_patch16_224", "torchvision:mobilenet_v3_small"):
        out = tmp_path / backbone.replace(":", "-")
        result = torchrun(
            out,
            data,
            "--backbone",
            backbone,
            "--image-size",
            "32",
            "--subset",
            "64",
            "--epochs",
            "1",
            "--knn-every",
            "0",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert {r["world_size"] for r in _metrics(out) if "loss" in r} == {2}
        assert f"backbone: {backbone}" in (out / "config.yaml").read_text()
        assert (out / "backbone.safetensors").exists()


@pytest.mark.parametrize("method", ["mocov2", "swav", "dino", "barlowtwins", "vicreg"])
def test_every_method_trains_under_torchrun(tmp_path, uninterrupted, method):
    data = uninterrupted[0]
    out = tmp_path / method
    extra = {
        "mocov2": ["--queue-size", "64"],
        "swav": ["--local-crops", "2", "--queue-size", "64", "--prototypes", "64"],
        "dino": ["--local-crops", "2", "--prototypes", "64"],
    }.get(method, [])
    result = torchrun(out, data, "--method", method, "--subset", "64", "--epochs", "2", "--knn-every", "0", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size: 2" in (out / "config.yaml").read_text() and (out / "backbone.safetensors").exists()
    assert {r["world_size"] for r in _metrics(out) if "loss" in r} == {2}
