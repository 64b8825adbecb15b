"""Picture settings in the one typed config: picture epoch defaults, one picture column, paths from the config
file's folder, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from weakflow.tasks.lib.config import PICTURE_DEFAULTS, ConfigError, load_config, parse_config


def test_pictures_get_picture_epochs_unless_set() -> None:
    cfg = parse_config({"data": {"source": "demo_images"}})
    assert (cfg.weak_train.epochs, cfg.weak_train.batch_size, cfg.full_train.epochs, cfg.full_train.finetune_epochs,
            cfg.full_train.batch_size) == (
        PICTURE_DEFAULTS["weak_train"]["epochs"], PICTURE_DEFAULTS["weak_train"]["batch_size"],
        PICTURE_DEFAULTS["full_train"]["epochs"], PICTURE_DEFAULTS["full_train"]["finetune_epochs"],
        PICTURE_DEFAULTS["full_train"]["batch_size"])
    mine = parse_config({"data": {"source": "demo_images"}, "weak_train": {"epochs": 3}, "full_train": {"epochs": 2}})
    assert (mine.weak_train.epochs, mine.full_train.epochs) == (3, 2)
    assert cfg.weak_train.evidence_loss == PICTURE_DEFAULTS["weak_train"]["evidence_loss"] == "ce"
    assert parse_config({"data": {"source": "demo_images"},
                         "weak_train": {"evidence_loss": "gce"}}).weak_train.evidence_loss == "gce"
    tables = parse_config({})
    assert (tables.weak_train.epochs, tables.full_train.epochs, tables.weak_train.batch_size) == (60, 20, 128)
    assert tables.weak_train.evidence_loss == "gce"
    assert tables.tracking.model_name != cfg.tracking.model_name == "weakflow-fashion-classifier"


def test_picture_paths_start_from_the_config_files_folder(tmp_path: Path) -> None:
    (tmp_path / "my.yaml").write_text("data:\n  source: files\n  train_path: t.csv\n  test_path: s.csv\n"
                                      "  image_columns: [image]\n")
    cfg = load_config(tmp_path / "my.yaml")
    assert cfg.data.image_root == tmp_path and cfg.pictures
    (tmp_path / "root.yaml").write_text("data:\n  source: files\n  train_path: t.csv\n  test_path: s.csv\n"
                                        "  image_columns: [image]\n  image_root: pics\n")
    assert load_config(tmp_path / "root.yaml").data.image_root == tmp_path / "pics"


@pytest.mark.parametrize("data,expected", [
    ({"image_columns": ["a", "b"]}, "one column of pictures per row"),
    ({"image_columns": ["a"], "image_shape": [1, 8, 8]}, "image_shape describes pixel columns"),
    ({"image_columns": ["a"], "image_size": 4}, "data.image_size"),
    ({"image_columns": ["a"], "text_columns": ["a"]}, "used twice"),
    ({"image_columns": ["a"], "weak_label_columns": ["w"], "tag_columns": ["w"]}, "used twice"),  # no rule sees votes
])
def test_picture_settings_fail_in_one_line(data: dict, expected: str) -> None:
    raw = {"data": {"source": "files", "train_path": "t.csv", "test_path": "s.csv", **data}}
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw)


def test_pictures_keep_the_last_epoch_within_noise_of_the_best_unless_set() -> None:
    from weakflow.tasks.lib.modeling import epoch_noise

    auto = parse_config({"data": {"source": "demo_images"}}).selection
    assert auto.epoch_noise == "auto" and epoch_noise(auto, pictures=True) == 1.0
    assert epoch_noise(auto, pictures=False) == 0.0  # tables and text: the best epoch, as before
    mine = parse_config({"data": {"source": "demo_images"}, "selection": {"epoch_noise": 0}}).selection
    assert epoch_noise(mine, pictures=True) == 0.0
    assert epoch_noise(parse_config({"selection": {"epoch_noise": 2.5}}).selection, pictures=False) == 2.5
    with pytest.raises(ConfigError, match="epoch_noise"):
        parse_config({"selection": {"epoch_noise": -1}})
