"""The frozen-feature cache: content keys, float16 values, invalidation, fixed views, exact resume."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from afford import checkpoint as ckpt
from afford.backbones import create_backbone
from afford.config import build_config
from afford.data.agd20k import AffordanceTrainSet, open_split
from afford.data.transforms import TrainTransform
from afford.engine.feature_cache import FeatureStore, attach_feature_cache, cache_stats
from afford.engine.trainer import train
from afford.errors import AffordError
from conftest import TINY_OVERRIDES


class Holder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = create_backbone("tiny_vit", layers=(-1,))


def test_cached_tower_returns_the_stored_float16_features_and_hits_on_repeats(tmp_path: Path) -> None:
    m = Holder()
    images = torch.rand(3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    plain = m.backbone(images)
    keys_before = set(m.state_dict())
    attach_feature_cache(m, tmp_path)
    assert set(m.state_dict()) == keys_before  # checkpoints are unaffected
    first = m.backbone(images)
    again = m.backbone(torch.cat([images[1:], images[:1]]))  # same images, another order
    assert cache_stats(m) == {"backbone": {"hits": 3, "misses": 3}}
    for a, b in ((first.keys[0], plain.keys[0]), (first.cls_attn, plain.cls_attn), (first.tokens[0], plain.tokens[0])):
        torch.testing.assert_close(a, b.half().float())  # float16 storage, nothing else
    assert torch.equal(again.keys[0], torch.cat([first.keys[0][1:], first.keys[0][:1]]))
    assert torch.equal(first.saliency, plain.saliency)
    # A new process (a new model on the same directory) reads what the first one stored.
    m2 = Holder()
    attach_feature_cache(m2, tmp_path)
    assert torch.equal(m2.backbone(images).keys[0], first.keys[0])
    assert cache_stats(m2)["backbone"] == {"hits": 3, "misses": 0}


def _write_entries(root: str, keys: list[str]) -> None:
    """One writer process: a chunk per key, value = the key's number, through one store."""
    store = FeatureStore(Path(root))
    for k in keys:
        store.put([k], {"keys_0": torch.full((1, 4), float(k.split("_")[1]))})


def test_concurrent_writers_share_one_store_without_losing_or_tearing_entries(tmp_path: Path) -> None:
    # Two processes write 40 entries each into one directory at once (10 keys written by both).
    a = [f"k_{i}" for i in range(40)]
    b = [f"k_{i}" for i in range(30, 70)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_entries, args=(str(tmp_path), keys)) for keys in (a, b)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = FeatureStore(tmp_path)
    assert sorted(store.index, key=lambda k: int(k.split("_")[1])) == [f"k_{i}" for i in range(70)]
    for k in store.index:
        assert np.array_equal(store.get(k)["keys_0"], np.full(4, float(k.split("_")[1]), dtype=np.float16))
    chunks = sorted(int(d.name.split("_")[1]) for d in tmp_path.glob("chunk_*"))
    assert chunks == list(range(80))  # every chunk got its own number: none overwritten


def test_a_reader_picks_up_entries_another_process_wrote_after_it_opened(tmp_path: Path) -> None:
    reader = FeatureStore(tmp_path)
    _write_entries(str(tmp_path), ["k_7"])  # as another process would: a store of its own
    assert "k_7" not in reader.index
    reader.refresh()
    assert np.array_equal(reader.get("k_7")["keys_0"], np.full(4, 7.0, dtype=np.float16))
    reader.put(["k_8"], {"keys_0": torch.full((1, 4), 8.0)})  # takes the next number, not chunk 0 again
    assert sorted(d.name for d in tmp_path.glob("chunk_*")) == ["chunk_000000", "chunk_000001"]


def test_other_weights_or_outputs_are_other_cache_entries(tmp_path: Path) -> None:
    m = Holder()
    attach_feature_cache(m, tmp_path)
    images = torch.rand(2, 3, 56, 56)
    a = m.backbone(images)
    with torch.no_grad():
        next(m.backbone.parameters()).add_(0.5)
    b = m.backbone(images)
    assert cache_stats(m)["backbone"]["misses"] == 4  # new weights: nothing reused
    assert not torch.allclose(a.keys[0], b.keys[0])
    m.backbone(images, return_tokens=False)
    assert cache_stats(m)["backbone"]["misses"] == 6  # another set of outputs: another entry
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3


def test_the_callers_autocast_is_part_of_the_key(tmp_path: Path) -> None:
    """train.bf16 runs the (dtype-less) tower under the step's autocast: its features are other
    values, so they must not be served from, or stored as, the float32 entries."""
    m = Holder()
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want_low = m.backbone(images).keys[0]
    attach_feature_cache(m, tmp_path)
    full = m.backbone(images).keys[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m.backbone(images).keys[0]
    assert cache_stats(m)["backbone"] == {"hits": 0, "misses": 4}
    torch.testing.assert_close(low, want_low.half().float())
    assert not torch.equal(low, full)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_leftovers_of_killed_writers_are_removed_and_entries_kept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).put(["a"], {"keys_0": torch.ones(1, 4)})
    from afford.engine.feature_cache import _HOST

    dead = root / f".chunk.{_HOST}.999999999"  # a staging folder of a writer that is gone (no such pid)
    dead.mkdir()
    (dead / "keys_0.npy").write_bytes(b"partial")
    (root / ".chunk.otherhost.999999999").mkdir()  # another machine's: cannot be told dead from here
    (root / "chunk_000007").mkdir()  # renamed into place, index line never written
    store = FeatureStore(root)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [".chunk.otherhost.999999999", "chunk_000000"]
    assert np.array_equal(store.get("a")["keys_0"], np.ones(4, dtype=np.float16))
    # an index line cut by a kill does not swallow the next writer's line
    with (root / "index.jsonl").open("a") as f:
        f.write('{"chunk": 7, "ke')
    store.put(["b"], {"keys_0": torch.full((1, 4), 2.0)})
    again = FeatureStore(root)
    assert np.array_equal(again.get("b")["keys_0"], np.full(4, 2.0, dtype=np.float16))


def test_a_trainable_backbone_cannot_be_cached(tmp_path: Path) -> None:
    m = Holder()
    m.backbone = create_backbone("tiny_vit", trainable=True)
    with pytest.raises(AffordError, match="no frozen vision tower"):
        attach_feature_cache(m, tmp_path)


def test_fixed_views_repeat_each_image_crop_across_epochs(synth_root: Path) -> None:
    split = open_split(synth_root, "Seen")
    ds = AffordanceTrainSet(split, n_exo=2, transform=TrainTransform(64, 48), seed=0, views=2)
    crops: dict[str, set[bytes]] = {}
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            ego_file = ds._draw(i)[1]
            crops.setdefault(str(ego_file), set()).add(item["ego"].numpy().tobytes())
    assert max(len(v) for v in crops.values()) == 2  # at most `views` distinct crops per image
    with pytest.raises(AffordError, match="cache_views"):
        AffordanceTrainSet(split, views=-1)


def test_training_with_the_cache_resumes_exactly_and_records_it(synth_root: Path, tmp_path: Path) -> None:
    over = [f"data.root={synth_root}", *TINY_OVERRIDES, "model.train_backbone=false", "data.feature_cache=true",
            f"data.cache_dir={tmp_path / 'cache'}", "data.cache_views=1"]
    train(build_config("locate", overrides=[*over, "train.epochs=2"]), tmp_path / "a", progress=False)
    train(build_config("locate", overrides=[*over, "train.epochs=1"]), tmp_path / "b", progress=False)
    train(build_config("locate", overrides=[*over, "train.epochs=2"]), tmp_path / "b", resume=True, progress=False)
    wa, wb = load_file(tmp_path / "a" / ckpt.WEIGHTS), load_file(tmp_path / "b" / ckpt.WEIGHTS)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["feature_cache"]["towers"] == ["backbone"] and info["feature_cache"]["dtype"] == "float16"
    # run b's first epoch shows run a's first epoch's images again: all read from a's cache
    first = next(json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()
                 if '"kind": "epoch"' in line)
    assert first["feature_cache"]["backbone"]["misses"] == 0 and first["feature_cache"]["backbone"]["hits"] > 0


def test_epochs_scored_on_test_get_the_scores_afford_eval_gives_their_weights(synth_root: Path, tmp_path: Path) -> None:
    from afford.engine.tasks import task_for

    over = [f"data.root={synth_root}", *TINY_OVERRIDES, "model.train_backbone=false", "data.feature_cache=true",
            f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "train.select=best-on-test"]
    res = train(build_config("locate", overrides=over), tmp_path / "run", progress=False)
    run = ckpt.load_run(tmp_path / "run")
    summary = task_for(run.config).evaluate(run.method, run.config, torch.device("cpu"), False)
    assert res.selection["test"] == {k: summary[k] for k in res.selection["test"]}  # exactly, not float16 features
    assert res.history[0]["feature_cache"]["backbone"]["misses"] > 0  # training did use the cache


def test_bench_refuses_what_it_cannot_measure(capsys) -> None:
    from afford.bench import run_bench
    from afford.cli import main

    with pytest.raises(AffordError, match="not an affordance method"):
        run_bench(("clip4hoi",))
    with pytest.raises(AffordError, match="--steps"):
        run_bench(("locate",), steps=0)
    with pytest.raises(SystemExit):  # argparse's choices
        main(["bench", "--methods", "nope"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["layers", "mean", "std", "input_stats", "name"])
def test_every_field_that_changes_the_features_is_in_the_key(tmp_path: Path, field: str) -> None:
    """Two towers with the same weights that differ in one field must not share cache entries: a tower
    asking for another layer, or normalising its input otherwise, would be served the other's features."""
    from afford.engine.feature_cache import tower_fingerprint

    a, b = Holder(), Holder()
    if field == "layers":
        torch.manual_seed(0)
        b.backbone = create_backbone("tiny_vit", layers=(-2,))
        assert all(torch.equal(v, b.backbone.state_dict()[k]) for k, v in a.backbone.state_dict().items())
    elif field in ("mean", "std"):
        setattr(b.backbone, field, (0.4, 0.4, 0.4))
    elif field == "input_stats":
        b.backbone.input_stats = "imagenet" if a.backbone.input_stats != "imagenet" else "own"
    else:
        b.backbone.name = "another_tiny_vit"
    assert tower_fingerprint(a.backbone, True) == tower_fingerprint(Holder().backbone, True)  # same tower, same key
    assert tower_fingerprint(a.backbone, True) != tower_fingerprint(b.backbone, True)
    if field == "layers":  # end to end: the second tower computes its own layer instead of a hit
        images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(3))
        want = b.backbone(images).keys[0]
        attach_feature_cache(a, tmp_path)
        attach_feature_cache(b, tmp_path)
        a.backbone(images)
        got = b.backbone(images).keys[0]
        assert cache_stats(b)["backbone"] == {"hits": 0, "misses": 2}
        torch.testing.assert_close(got, want.half().float())
