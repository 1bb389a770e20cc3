import pytest

from byol.config import PRESETS, TrainConfig, merge, read_yaml, resolve, save_yaml
from byol.errors import UserError


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


@pytest.mark.parametrize("overrides,match", [
    ({"batch_size": -4}, "--batch-size"),
    ({"batch_size": 1}, "batch norm"),
    ({"epochs": 0}, "--epochs"),
    ({"base_tau": 1.5}, "--base-tau"),
    ({"image_size": 4}, "--image-size"),
    ({"backbone": "vgg"}, "--backbone"),
    ({"dataset": "imagenet"}, "--dataset"),
])
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
