"""The grid: params/ -> runs and table cells; the paper protocol; mistakes rejected with clear messages."""
import shutil
from pathlib import Path

import pytest
import yaml

from mdr.config import ConfigError
from mdr.grid import PARAMS_DIR, load_grid


@pytest.fixture(scope="module")
def paper():
    return load_grid("paper")


@pytest.fixture(scope="module")
def smoke():
    return load_grid("smoke")


def _find(grid, table, **labels):
    for cell in grid.tables[table].cells:
        if all(cell.labels.get(k) == v for k, v in labels.items()):
            return [grid.runs[r].config for r in cell.run_ids]
    raise AssertionError(f"no cell {labels} in {table}")


def test_paper_cub_triplet_mdr_follows_the_authors_protocol(paper):
    configs = _find(paper, "table1", dataset="cub200", method="Triplet+MDR")
    assert [c.seed for c in configs] == [0, 1, 2]
    c = configs[0]
    assert (c.model.backbone, c.model.embedding_dim, c.model.pretrained, c.model.freeze_bn) == ("bninception", 512, True, True)
    assert (c.train.batch_size, c.train.images_per_class) == (128, 4)
    assert c.train.epochs * c.train.iterations_per_epoch == 10_000
    assert c.optim.lr == 5e-5 and c.optim.weight_decay == 1e-5
    assert c.optim.lr_milestones == [40, 60, 80] and c.optim.lr_gamma == 0.2
    assert c.regularizer.name == "mdr"
    assert c.regularizer.params == {"levels": [-3.0, 0.0, 3.0], "weight": 0.6, "level_penalty": 0.01, "momentum": 0.9}
    assert c.normalization == "batch_mean_distance"
    assert (c.data.image_size, c.data.crop, c.data.crop_scale, c.data.hflip) == (256, 224, (0.16, 1.0), True)
    assert c.eval.ks == [1, 2, 4, 8]
    assert c.loss.params["margin"] == 0.2


@pytest.mark.parametrize("dataset,lam,lr,batch,ks", [
    ("cars196", 0.2, 5e-5, 128, [1, 2, 4, 8]),
    ("sop", 0.1, 1e-4, 256, [1, 10, 100, 1000]),
    ("inshop", 0.1, 1e-4, 256, [1, 10, 20, 30, 40]),
])
def test_paper_per_dataset_settings(paper, dataset, lam, lr, batch, ks):
    c = _find(paper, "table1", dataset=dataset, method="Triplet+MDR")[0]
    assert c.regularizer.params["weight"] == lam and c.optim.lr == lr
    assert c.train.batch_size == batch and c.eval.ks == ks
    assert c.data.dataset == dataset


def test_baselines_differ_from_mdr_only_in_regularizer_and_head(paper):
    triplet = _find(paper, "table1", dataset="cub200", method="Triplet")[0]
    l2 = _find(paper, "table1", dataset="cub200", method="Triplet+L2Norm")[0]
    mdr = _find(paper, "table1", dataset="cub200", method="Triplet+MDR")[0]
    assert triplet.normalization == "batch_mean_distance" and l2.normalization == "l2"
    for other in (triplet, l2):
        a, b = other.model_dump(), mdr.model_dump()
        a.pop("regularizer"), b.pop("regularizer")
        assert a == b


def test_dagger_rows_use_256_px(paper):
    c = _find(paper, "table1", dataset="sop", method="Triplet+MDR†")[0]
    assert (c.data.image_size, c.data.crop) == (292, 256)


SMOKE_DATASETS = {"cub200": "glyphs-cub", "cars196": "glyphs-cars", "sop": "glyphs-sop", "inshop": "glyphs-inshop"}
SMOKE_BACKBONES = {"resnet18": "glyphnet-s", "bninception": "glyphnet-m", "resnet50": "glyphnet-l"}


def test_smoke_maps_each_paper_dataset_to_its_own_glyphs_benchmark(smoke):
    table = smoke.tables["table1"]
    for cell in table.cells:
        assert {smoke.runs[r].config.data.dataset for r in cell.run_ids} == {SMOKE_DATASETS[cell.labels["dataset"]]}
    published = {r for c in table.cells if c.labels["protocol"] == "published" for r in c.run_ids}
    fair = {r for c in table.cells if c.labels["protocol"] == "fair" for r in c.run_ids}
    assert len(published) == 4 * 4 * 5  # 4 rows x 4 datasets x 5 seeds
    assert len(fair) == 4 * 2 * 5  # the fair protocol on cub200 and cars196 (the table's `exclude`)


@pytest.mark.parametrize("dataset,ks", [("sop", [1, 10, 100, 1000]), ("inshop", [1, 10, 20, 30, 40])])
def test_smoke_sop_and_inshop_runs_keep_the_papers_batch_composition(smoke, dataset, ks):
    configs = [smoke.runs[r].config for c in smoke.tables["table1"].cells if c.labels["dataset"] == dataset
               for r in c.run_ids]
    assert configs
    for c in configs:
        # 256 = 85 classes x 3 images + 1: the last class of a batch is partial, as the authors' sampler
        assert (c.train.batch_size, c.train.images_per_class, c.train.allow_partial_class) == (256, 3, True)
        assert c.eval.ks == ks


def test_smoke_backbones_are_the_pretrained_glyphnets_of_the_same_rank(smoke):
    assert smoke.profile.backbones == SMOKE_BACKBONES
    for cell in smoke.tables["table2a"].cells:
        glyphnet = SMOKE_BACKBONES[cell.labels["backbone"]]
        for rid in cell.run_ids:
            model = smoke.runs[rid].config.model
            assert (model.backbone, model.weights, model.pretrained) == (glyphnet, f"data/pretrained/{glyphnet}.pt", True)


def test_smoke_seeds_five_for_the_main_tables_three_for_the_ablations(smoke):
    expected = {"table1": 5, "regularizers": 5, "table2a": 3, "table2b": 3, "table2c": 3, "figure4a": 3, "closedset": 3}
    for name, seeds in expected.items():
        for cell in smoke.tables[name].cells:
            assert sorted(smoke.runs[r].config.seed for r in cell.run_ids) == list(range(seeds)), (name, cell.labels)


def test_every_smoke_run_caches_features_of_weights_the_pretrain_stage_writes(smoke):
    for rid, spec in smoke.runs.items():
        c = spec.config
        assert c.data.cached_views > 0, rid
        assert c.model.weights.startswith("data/pretrained/glyphnet-") and c.model.weights.endswith(".pt"), rid


def test_run_ids_are_readable_and_stable(smoke):
    again = load_grid("smoke")
    assert list(again.runs) == list(smoke.runs)
    rid = next(r for r, spec in smoke.runs.items() if "table1" in spec.tables)
    assert rid.startswith("glyphs-cub-glyphnet-m-triplet-") and "-seed0-" in rid


# ---- mistakes in params/ -------------------------------------------------------------------------

@pytest.fixture
def params(tmp_path):
    dst = tmp_path / "params"
    shutil.copytree(PARAMS_DIR, dst)
    return dst


def _edit(path: Path, fn):
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["defaults"]["model"].update(backbone="resnet19"),
     r"model\.backbone: unknown backbone 'resnet19'; allowed: .*resnet18"),
    (lambda p: p["defaults"]["train"].update(batch_size=66),
     r"batch_size 66 is not divisible by images_per_class"),
    (lambda p: next(o for o in p["overrides"] if o["when"].get("regularizer") == "mdr")["set"]["regularizer"]["params"]
     .update(levels="-3,0,3"),
     r"levels must be a list of numbers"),
    (lambda p: p["defaults"]["train"].update(epochz=3),
     r"train\.epochz: unknown key"),
    (lambda p: p["datasets"].update(cub200="cub"),
     r"unknown dataset 'cub'; allowed: .*cub200"),
])
def test_profile_mistakes_name_the_key_and_allowed_values(params, edit, message):
    _edit(params / "profiles" / "smoke.yaml", edit)
    with pytest.raises(ConfigError, match=message):
        load_grid("smoke", params)


def test_unknown_method_and_loss(params):
    _edit(params / "tables" / "table1.yaml", lambda t: t["axes"]["method"]["choices"]["Triplet"].update(method="Tripplet"))
    with pytest.raises(ConfigError, match=r"unknown method 'Tripplet'; allowed: Triplet"):
        load_grid("smoke", params)


def test_unknown_loss_in_methods(params):
    _edit(params / "methods.yaml", lambda m: m["Triplet"].update(loss="tripplet"))
    with pytest.raises(ConfigError, match=r"loss\.name: unknown loss 'tripplet'; allowed: contrastive, margin, triplet"):
        load_grid("smoke", params)


def test_table_layout_must_name_every_axis(params):
    _edit(params / "tables" / "table1.yaml", lambda t: t.update(columns=[]))
    with pytest.raises(ConfigError, match=r"table1\.yaml: .*must name every axis"):
        load_grid("smoke", params)


def test_unknown_profile():
    with pytest.raises(ConfigError, match=r"unknown profile 'smoek'; allowed: paper, smoke"):
        load_grid("smoek")


@pytest.mark.parametrize("where,key", [("profiles/smoke.yaml", "seeds"), ("tables/figure3.yaml", "seeds")])
def test_a_repeated_seed_is_rejected_naming_the_file_and_key(params, where, key):
    _edit(params / where, lambda d: d.update({key: [0, 1, 0]}))
    with pytest.raises(ConfigError, match=rf"{where}: {key}: \[0, 1, 0\] repeats seed 0: .*list each seed once"):
        load_grid("smoke", params)
