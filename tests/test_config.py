from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from afford.config import build_config, load_config
from afford.errors import AffordError


def test_defaults_are_the_papers():
    cfg = build_config("locate")
    assert cfg.model.aff_cam_thd == 0.6 and cfg.model.part_iou_thd == 0.6 and cfg.model.cel_margin == 0.5
    assert cfg.model.con_weight == 0.07 and cfg.model.cluster_num == 3
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (15, 16, 1e-3)
    assert (cfg.train.momentum, cfg.train.weight_decay, cfg.train.nesterov) == (0.9, 5e-4, True)
    assert (cfg.train.step_size, cfg.train.gamma) == (5, 0.1)


def test_overrides_are_typed():
    cfg = build_config("locate", overrides=["train.epochs=3", "train.lr=0.5", "model.train_backbone=true",
                                            "model.backbone_weights=null", "data.split=Unseen"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == 0.5 and cfg.model.train_backbone is True
    assert cfg.model.backbone_weights is None and cfg.data.split == "Unseen"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=3", "unknown config key 'train.epoch' (did you mean: epochs"),
        ("trian.epochs=3", "unknown config key 'trian.epochs'"),
        ("train.epochs=three", "train.epochs: expected an integer"),
        ("train.epochs=2.5", "train.epochs: expected an integer"),
        ("model.train_backbone=maybe", "model.train_backbone: expected true/false"),
        ("epochs", "--set expects key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(AffordError) as e:
        build_config("locate", overrides=[override])
    assert fragment in str(e.value)


PRESETS = sorted(p.stem for p in Path(str(resources.files("afford") / "configs")).glob("*.yaml"))


def test_every_preset_is_found():
    assert len(PRESETS) >= 9 and {"locate_seen", "wsma_seen", "egocam_synthagd_demo"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_packaged_preset_builds_a_registered_method(name):
    from afford.factory import list_methods, method_entry

    cfg = load_config(name)
    assert cfg.method in list_methods()
    assert type(cfg.model) is method_entry(cfg.method)[1]
    # the preset's split is the one its name says
    for suffix, split in (("_unseen", "Unseen"), ("_hico_iif", "HICO-IIF"), ("_seen", "Seen")):
        if name.endswith(suffix):
            assert cfg.data.split == split


def test_packaged_presets_load():
    assert load_config("locate_unseen").data.split == "Unseen"
    assert load_config("locate_hico_iif").data.split == "HICO-IIF"


def test_unknown_method_and_file(tmp_path):
    with pytest.raises(AffordError, match="unknown method 'locat'.*did you mean: locate"):
        build_config("locat")
    with pytest.raises(AffordError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {backbone: x}\n")
    with pytest.raises(AffordError, match="'method:' key"):
        load_config(bad)
