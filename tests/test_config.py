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
        # ranges and choices, named before anything runs (they failed deep in torch, or not at all)
        ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
        ("train.epochs=0", "train.epochs: expected an integer >= 1"),
        ("train.step_size=0", "the step scheduler needs step_size >= 1 and gamma > 0, got 0 / 0.1"),
        ("data.crop=0", "data.crop: expected an integer >= 1"),
        ("data.test_size=-5", "data.test_size: expected an integer >= 1"),
        ("data.num_workers=-1", "data.num_workers: expected an integer >= 0"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints: expected an integer >= 0"),
        ("train.lr=nan", "train.lr: expected a finite number > 0, got nan"),
        ("train.lr=0", "train.lr: expected a finite number > 0"),
        ("train.momentum=-0.1", "train.momentum: expected a number >= 0"),
        ("data.crop=300", "data.crop: the training crop (300) must not exceed data.resize (256)"),
        ("eval.protocol=foo", "eval.protocol: expected one of standard"),
        # non-finite integers and YAML's yes/no words were tracebacks or silent guesses
        ("train.epochs=nan", "train.epochs: expected an integer, got 'nan'"),
        ("train.epochs=inf", "train.epochs: expected an integer, got 'inf'"),
        ("train.lr=true", "train.lr: expected a number, got True"),
        ("data.split=no", "data.split: expected a string, got False (YAML reads yes/no/on/off as true/false"),
        # every range the config states (not only the ones above)
        ("data.resize=0", "data.resize: expected an integer >= 1"),
        ("data.n_exo=0", "data.n_exo: expected an integer >= 1"),
        ("data.cache_views=-1", "data.cache_views: expected an integer >= 0"),
        ("train.weight_decay=-1", "train.weight_decay: expected a number >= 0"),
        ("train.grad_clip=-1", "train.grad_clip: expected a number >= 0"),
        ("eval.batch_size=0", "eval.batch_size: expected an integer >= 1"),
        ("train.max_steps_per_epoch=-1", "train.max_steps_per_epoch: expected an integer >= 0"),
        ("train.log_every=-1", "train.log_every: expected an integer >= 0"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(AffordError) as e:
        build_config("locate", overrides=[override])
    assert fragment in str(e.value)


def test_yaml_integers_one_and_zero_are_true_and_false():
    assert build_config("locate", overrides=["model.train_backbone=1"]).model.train_backbone is True
    assert build_config("locate", overrides=["model.train_backbone=0"]).model.train_backbone is False
    assert build_config("locate", overrides=["data.split='no'"]).data.split == "no"  # quoted: the string


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
    bad.write_bytes(b"method: locate\n# caf\xe9 in Latin-1\n")  # saved by an editor in another encoding
    with pytest.raises(AffordError, match=r"bad\.yaml: not a UTF-8 text file \(byte 20\)"):
        load_config(bad)
    bad.write_text("method: [locate\n")
    with pytest.raises(AffordError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    # where and what: a tab said only 'while scanning for the next token'; a key given twice kept the
    # last value silently (PyYAML's default), so epochs 2 trained 30
    bad.write_text("method: locate\nmodel:\n  backbone: dino_vits16\n\tgrid: 14\n")
    with pytest.raises(AffordError, match=r"line 4, column 1: found character '\\t'"):
        load_config(bad)
    bad.write_text("method: locate\ntrain: {epochs: 2, epochs: 30}\n")
    with pytest.raises(AffordError, match=r"key 'epochs' given twice \(lines 2 and 2\)"):
        load_config(bad)
    bad.write_text("method: locate\ntrain: {epochs: 2}\neval: {batch_size: 4}\ntrain:\n  lr: 0.1\n")
    with pytest.raises(AffordError, match=r"key 'train' given twice \(lines 2 and 4\)"):
        load_config(bad)
    bad.write_text("method: locate\ntrain: {epochs: 2}\neval: {epochs: 2}\n")  # the same key in two mappings is fine
    with pytest.raises(AffordError, match="eval: unknown key 'epochs'|unknown.*epochs"):
        load_config(bad)


def test_a_bad_value_in_a_run_record_names_the_file(tmp_path):
    from afford.config import config_from_dict

    d = build_config("locate").to_dict()
    d["train"]["lr"] = "fast"
    with pytest.raises(AffordError, match=r"run\.json: config: train\.lr: expected a number"):
        config_from_dict(d, tmp_path / "run.json")


def test_values_runs_were_trained_with_still_load():
    # log_every 0 (every step), cache_views 0 (a fresh crop per epoch), no step scheduler's settings
    cfg = build_config("locate", overrides=["train.log_every=0", "data.cache_views=0", "train.scheduler=none",
                                            "train.step_size=0", "train.gamma=0"])
    assert (cfg.train.log_every, cfg.data.cache_views, cfg.train.step_size) == (0, 0, 0)


def test_a_mistyped_preset_name_gets_suggestions() -> None:
    with pytest.raises(AffordError, match=r"did you mean: locate_synthagd_demo"):
        load_config("locate_synthagd_dem")


#: methods.md's training recipes (§1.4 LOCATE, §2.3 WSMA, §3.3 LoopTrans, §4.6 SelectiveCL): epochs, batch,
#: lr, scheduler, step size, seed, exocentric images, resize / crop, square resize, exocentric sampling.
RECIPES = {
    "locate": (15, 16, 1e-3, "step", 5, 0, 3, 256, 224, False, "anchor_plus_random"),
    "wsma": (13, 10, 1e-3, "none", None, 0, 3, 256, 224, False, "consecutive_window"),
    "looptrans": (5, 16, 1e-3, "step", 5, 42, 3, 256, 224, True, "anchor_plus_random"),
    "selectivecl": (15, 8, 1e-3, "step", 50, 0, 3, 256, 224, False, "anchor_plus_random"),
}


@pytest.mark.parametrize("method", sorted(RECIPES))
@pytest.mark.parametrize("split", ["seen", "unseen", "hico_iif"])
def test_the_published_presets_state_the_papers_recipes(method, split):
    cfg = load_config(f"{method}_{split}")
    t, d = cfg.train, cfg.data
    epochs, batch, lr, scheduler, step, seed, n_exo, resize, crop, square, sampling = RECIPES[method]
    if method == "selectivecl" and split == "hico_iif":
        epochs = 50  # the paper trains 50 epochs on HICO-IIF
    assert (t.epochs, t.batch_size, t.lr, t.scheduler, t.seed) == (epochs, batch, lr, scheduler, seed)
    assert step is None or t.step_size == step
    assert (t.optimizer, t.momentum, t.weight_decay) == ("sgd", 0.9, 5e-4)  # §0.3: SGD, Nesterov, 0.9, 5e-4
    assert (d.n_exo, d.resize, d.crop, d.square_resize, d.sampling) == (n_exo, resize, crop, square, sampling)


def test_list_config_prints_every_key_its_default_where_changed_and_what_it_means(capsys) -> None:
    """The shared keys are documented where a user looks (afford list --config), from the comments beside
    their defaults: every one has a note, so a new key without one fails here."""
    from dataclasses import fields

    from afford.cli import main
    from afford.config import DataConfig, EvalConfig, TrainConfig, field_notes

    for cls in (DataConfig, TrainConfig, EvalConfig):
        notes = field_notes(cls)
        assert set(notes) == {f.name for f in fields(cls)}, cls.__name__
    assert field_notes(TrainConfig)["max_steps_per_epoch"] == "0 = full epoch; >0 caps the epoch (demo, smoke tests)"
    assert main(["list", "--config", "locate_synthagd_demo", "--set", "train.epochs=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "method: locate"
    assert "train.epochs: 3  (default 15)  # may grow on --resume, never shrink below the epochs done" in lines
    assert "model.backbone: 'tiny_vit'  (default 'dino_vits16')" in lines
    assert any(line.startswith("train.seed: 0  # ") for line in lines)  # unchanged: no default shown
    n_keys = sum(len(fields(c)) for c in (DataConfig, TrainConfig, EvalConfig))
    assert sum(line.split(".")[0] in ("data", "train", "eval") for line in lines) == n_keys
    assert main(["list", "--set", "train.epochs=3"]) == 2
    assert "--set applies to --config" in capsys.readouterr().err


def test_seeds_and_devices_outside_what_runs_are_one_line() -> None:
    """A seed past 64 bits failed inside torch after the run folder existed; a negative one trained while
    the data generators refused it; mps/xpu/cpu:1 failed deep in torch."""
    from afford.device import resolve_device

    for seed in ("-1", str(2**63), "99999999999999999999"):
        with pytest.raises(AffordError, match=r"train\.seed: expected an integer in \[0, 2\^63\)"):
            build_config("locate", overrides=[f"train.seed={seed}"])
    assert build_config("locate", overrides=[f"train.seed={2**63 - 1}"]).train.seed == 2**63 - 1
    for name, message in (("mps", "'mps' is not available in this torch build"), ("xpu", "'xpu' is not available"),
                          ("cpu:1", "there is one CPU device")):
        with pytest.raises(AffordError, match=message):
            resolve_device(name)
    assert str(resolve_device("cpu")) == "cpu"


def test_large_integers_stay_exact() -> None:
    """An integer went through a float: train.seed=2^63 - 1 became 2^63 (and was then refused)."""
    for raw in (str(2**63 - 1), f"'{2**63 - 1}'"):
        assert build_config("locate", overrides=[f"train.seed={raw}"]).train.seed == 2**63 - 1
    assert build_config("locate", overrides=["train.epochs=2.0"]).train.epochs == 2  # a whole float still is
