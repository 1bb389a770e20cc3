import pytest

from byol.runtime.errors import UserError
from byol.training.config import PRESETS, TrainConfig, merge, read_yaml, resolve, save_yaml


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_validate(preset):
    cfg = resolve(preset)
    assert isinstance(cfg, TrainConfig)


def test_precedence_default_preset_file_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nbatch-size: 32\n")
    cfg = resolve("smoke", str(path), {"batch_size": 16, "lr": None})
    assert cfg.epochs == 7  # file beats preset
    assert cfg.batch_size == 16  # command line beats file
    assert cfg.lr == resolve("smoke").lr  # None means "not given"
    assert cfg.subset == 512  # from the preset


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"bad.yaml: unknown key learning_rate"):
        resolve(config_file=str(path))


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"batch_size": -4}, "--batch-size"),
        ({"batch_size": 1}, "batch norm"),
        ({"epochs": 0}, "--epochs"),
        ({"base_tau": 1.5}, "--base-tau"),
        ({"image_size": 4}, "--image-size"),
        ({"backbone": "vgg"}, "--backbone"),
        ({"dataset": "imagenet"}, "--dataset"),
    ],
)
def test_invalid_values_name_the_option(overrides, match):
    with pytest.raises(UserError, match=match):
        resolve(overrides=overrides)


def test_wrong_types_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="'epochs' must be int"):
        merge(TrainConfig(), {"epochs": "many"}, "x.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("epochs: [1,\n")
    with pytest.raises(UserError, match="broken.yaml: not valid YAML"):
        read_yaml(path)
    with pytest.raises(UserError, match="no such file"):
        read_yaml(tmp_path / "missing.yaml")


def test_saved_config_reads_back_to_the_same_config(tmp_path):
    cfg = resolve("smoke", overrides={"stop_after_steps": 3, "resume": True, "channels_last": False})
    save_yaml(cfg, tmp_path / "config.yaml", resolved={"world_size": 1})
    again = resolve(config_file=str(tmp_path / "config.yaml"))
    assert again == resolve("smoke", overrides={"channels_last": False})


def test_each_option_is_written_once_with_its_help_and_the_registries_choices():
    from byol.data.datasets import DATASETS
    from byol.methods import METHODS
    from byol.models.backbones import ARCHITECTURES, STEMS
    from byol.training.config import FIELDS
    from byol.training.optim import OPTIMIZERS

    assert all(f.metadata["help"] for f in FIELDS.values())
    for name, registry in (("dataset", DATASETS), ("method", METHODS), ("optimizer", OPTIMIZERS), ("stem", STEMS)):
        assert FIELDS[name].metadata["choices"] == tuple(registry), name
    # backbones are open-ended (torchvision:NAME, timm:NAME): checked, and our own named in the help
    assert all(name in FIELDS["backbone"].metadata["help"] for name in ARCHITECTURES)
    assert FIELDS["backbone"].metadata["check"]("resnet18") is None
    assert "unknown backbone" in FIELDS["backbone"].metadata["check"]("vgg11")


def test_trajectory_and_runtime_keys_are_derived_from_the_fields():
    from byol.training.config import RUNTIME_ONLY, TRAJECTORY_KEYS

    # what the hand-written lists held before the options carried this themselves, and the methods' options since
    assert set(TRAJECTORY_KEYS) == {
        "dataset",
        "subset",
        "image_size",
        "crop_min_scale",
        "aug_remove",
        "method",
        "predictor",
        "negatives_beta",
        "temperature",
        "norm",
        "backbone",
        "stem",
        "width",
        "projection_dim",
        "projector_hidden_dim",
        "predictor_hidden_dim",
        "sync_bn",
        "epochs",
        "batch_size",
        "lr",
        "warmup_epochs",
        "optimizer",
        "momentum",
        "weight_decay",
        "trust_coefficient",
        "base_tau",
        "precision",
        "seed",
        "local_crops",
        "local_size",
        "local_crop_scale",
        "queue_size",
        "queue_start_epoch",
        "prototypes",
        "sinkhorn_epsilon",
        "sinkhorn_iterations",
        "freeze_head_epochs",
        "teacher_temperature",
        "teacher_temperature_start",
        "teacher_temperature_epochs",
        "center_momentum",
        "clip_grad",
        "lambda_offdiag",
        "sim_weight",
        "var_weight",
        "cov_weight",
        "final_weight_decay",
        "clip_lr",
        "lr_floor",
        "bias_lr_multiplier",
        "final_tau",
    }
    assert set(RUNTIME_ONLY) == {"resume", "stop_after_steps"}


def test_changed_trajectory_keys_compare_missing_keys_with_their_defaults():
    from byol.training.config import changed_trajectory_keys

    cfg = TrainConfig()
    saved = {k: v for k, v in cfg.to_dict().items() if k != "stem"}  # a checkpoint from before --stem existed
    assert changed_trajectory_keys(saved, cfg) == []
    assert changed_trajectory_keys({**saved, "lr": 1.0, "out": "elsewhere"}, cfg) == ["lr"]


@pytest.mark.parametrize(
    "values, named",
    [
        ({"stem": "big"}, "--stem: unknown stem 'big'"),
        ({"width": -1.0}, "--width: must be positive"),
        ({"device": "gpu!"}, "--device: unknown device"),
    ],
)
def test_options_checked_outside_a_config_name_the_option(values, named):
    from byol.training.config import check_options

    with pytest.raises(UserError, match=named):
        check_options(values)
