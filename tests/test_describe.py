"""What MLflow says a run is: tags from the run's config (not the table's `fixed: method`), the real dataset and
the paper dataset it stands in for, and run names whose first ~25 characters tell the runs apart."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from mdr import tracking
from mdr.describe import describe_grid
from mdr.grid import load_grid
from tests.conftest import tiny_config

PARAMS = Path(__file__).resolve().parents[1] / "params"

PROFILE = """\
name: mini
seeds: [0]
datasets: {cub200: glyphs, cars196: glyphs}
default_image_size: 224
image_sizes:
  224: {data.image_size: 36, data.crop: 32}
  256: {data.image_size: 40, data.crop: 36}
defaults:
  model: {backbone: smallcnn, pretrained: false, freeze_bn: false, embedding_dim: 16}
  optim: {lr_milestones: [1]}
  train: {epochs: 2, iterations_per_epoch: 2, batch_size: 8, images_per_class: 2, device: cpu}
"""
TABLES = {
    # the table's method axis, with a † row at the larger image-size preset
    "t1": """\
        name: t1
        title: t1
        axes:
          dataset: [cub200, cars196]
          method:
            choices:
              Triplet+MDR: {method: Triplet+MDR}
              "Triplet+MDR†": {method: Triplet+MDR, image_size: 256}
        rows: [method]
        columns: [dataset]
        """,
    # `fixed: method` is only a default: the loss and regularizer axes decide what runs
    "regs": """\
        name: regs
        title: regs
        fixed: {method: Triplet}
        axes:
          dataset: [cub200]
          loss: {path: loss.name, values: [contrastive, margin]}
          regularizer: {path: regularizer.name, values: [none, mdr]}
        rows: [loss, regularizer]
        columns: [dataset]
        """,
    # variants that differ only in a regularizer setting
    "ablation": """\
        name: ablation
        title: ablation
        fixed: {method: Triplet+MDR}
        axes:
          dataset: [cub200]
          configuration:
            choices:
              "lambda 0.1": {regularizer.params.weight: 0.1}
              "5 levels, spacing 3": {regularizer.params.levels: [-6.0, -3.0, 0.0, 3.0, 6.0]}
        rows: [configuration]
        columns: [dataset]
        """,
    # a numeric axis beside the method axis
    "dims": """\
        name: dims
        title: dims
        axes:
          dataset: [cub200]
          dimension: {path: model.embedding_dim, values: [16, 32]}
          method: [Triplet+L2Norm, Triplet+MDR]
        rows: [method, dimension]
        columns: [dataset]
        """,
    # a head the config overrides (l2 instead of the regularizer's batch-mean distance)
    "heads": """\
        name: heads
        title: heads
        fixed: {method: Triplet, model.normalization: l2}
        axes:
          dataset: [cars196]
          method: [Triplet]
        rows: [method]
        columns: [dataset]
        """,
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    params = tmp_path_factory.mktemp("params")
    (params / "profiles").mkdir()
    (params / "tables").mkdir()
    (params / "profiles" / "mini.yaml").write_text(PROFILE)
    (params / "methods.yaml").write_text((PARAMS / "methods.yaml").read_text())
    for name, text in TABLES.items():
        (params / "tables" / f"{name}.yaml").write_text(textwrap.dedent(text))
    return load_grid("mini", params)


def _by(grid, table: str, **labels):
    cell = next(c for c in grid.tables[table].cells if all(c.labels[k] == v for k, v in labels.items()))
    (rid,) = cell.run_ids
    return rid, grid.runs[rid].config


def test_each_kind_of_run_is_tagged_with_what_its_config_runs(grid):
    described = describe_grid(grid)
    expected = [  # (table, cell labels, method as methods.yaml spells it, loss, regularizer, paper datasets)
        ("t1", {"method": "Triplet+MDR", "dataset": "cub200"}, "Triplet+MDR", "triplet", "mdr", "cub200,cars196"),
        ("t1", {"method": "Triplet+MDR†", "dataset": "cars196"}, "Triplet+MDR†", "triplet", "mdr", "cub200,cars196"),
        ("regs", {"loss": "contrastive", "regularizer": "mdr"}, "Contrastive+MDR", "contrastive", "mdr", "cub200"),
        ("regs", {"loss": "margin", "regularizer": "none"}, "Margin", "margin", "none", "cub200"),
        ("ablation", {"configuration": "lambda 0.1"}, "Triplet+MDR", "triplet", "mdr", "cub200"),
        ("dims", {"method": "Triplet+L2Norm", "dimension": "32"}, "Triplet+L2Norm", "triplet", "l2norm", "cub200"),
        ("heads", {"method": "Triplet"}, "Triplet (l2 head)", "triplet", "none", "cars196"),
    ]
    for table, labels, method, loss, reg, stands_in in expected:
        rid, config = _by(grid, table, **labels)
        _, tags = described[rid]
        assert (config.loss.name, config.regularizer.name) == (loss, reg), (table, labels)
        assert tags["method"] == method, (table, labels, tags)
        assert (tags["loss"], tags["regularizer"]) == (loss, reg)
        assert tags["dataset"] == config.data.dataset == "glyphs"  # the dataset trained on, not cub200
        assert tags["stands_in_for"] == stands_in
        assert tags["seed"] == str(config.seed) and tags["embedding_dim"] == str(config.model.embedding_dim)
        assert tags["normalization"] == config.normalization
        assert table in tags["tables"].split(",")
    # MDR† is its own method: grouping by the tag keeps it apart from MDR
    dagger, plain = _by(grid, "t1", method="Triplet+MDR†", dataset="cub200"), _by(grid, "t1", method="Triplet+MDR",
                                                                                    dataset="cub200")
    assert dagger[1].data.crop == 36 and plain[1].data.crop == 32


def test_run_names_tell_runs_apart_within_mlflows_25_visible_characters(grid):
    described = describe_grid(grid)
    names = {rid: name for rid, (name, _) in described.items()}
    # one name per run, ending with the run's config hash
    assert len(set(names.values())) == len(names)
    assert all(name.endswith(" " + grid.runs[rid].config.fingerprint()) for rid, name in names.items())
    # the ablation's variants (same slug, same method) and the dimensions differ within the first 25 characters
    for table, count in (("ablation", 2), ("dims", 4)):
        shown = [names[r] for c in grid.tables[table].cells for r in c.run_ids]
        assert len({n[:25] for n in shown}) == len(shown) == count, shown
    rid, _ = _by(grid, "ablation", configuration="lambda 0.1")
    assert names[rid].startswith("lambda 0.1 Triplet+MDR glyphs s0 ")
    rid, _ = _by(grid, "dims", method="Triplet+MDR", dimension="32")
    assert names[rid].startswith("dim 32 Triplet+MDR glyphs s0 ")
    rid, _ = _by(grid, "regs", loss="contrastive", regularizer="mdr")
    assert names[rid].startswith("Contrastive+MDR glyphs s0 ")


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_the_grids_run_names_differ_within_25_characters_but_for_seed_and_hash(profile):
    """Each profile's runs: two runs that share a 25-character prefix differ only by seed or hash (the table2c
    variants and every method apart)."""
    grid = load_grid(profile)
    described = describe_grid(grid)
    groups: dict[str, set[str]] = {}
    for rid, (name, tags) in described.items():
        config = grid.runs[rid].config
        assert tags["dataset"] == config.data.dataset
        assert tags["method"].split("+")[0].split(" ")[0].lower() == config.loss.name
        groups.setdefault(name.rsplit(" ", 2)[0], set()).add(rid)
    assert all(len(rids) <= len(grid.profile.seeds) for rids in groups.values())  # one run per seed
    variants = [described[r][0] for c in grid.tables["table2c"].cells if c.labels["dataset"] == "cub200"
                for r in c.run_ids[:1]]
    assert len({n[:25] for n in variants}) == 10, variants


# --- the tags that reach MLflow ------------------------------------------------------------------------

def _folder(root: Path, rid: str, config, old_tags: dict) -> Path:
    folder = root / "runs" / "smoke" / rid
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    history = [{"epoch": e, "iteration": 3 * e, "loss": 1.0 / e, "metric_loss": 0.8 / e, "regularizer_loss": 0.2 / e,
                "reg_level_0": -3.0 + e, "reg_level_1": 0.1 * e, "lr": 1e-3} for e in (1, 2, 3)]
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "status.json").write_text(json.dumps({"status": "finished"}))
    (folder / "metrics.json").write_text(json.dumps({"run": rid, "tags": old_tags, "best_epoch": 3,
                                                     "best": {"recall_at_1": 0.5}, "final": {"recall_at_1": 0.5}}))
    return folder


def test_rebuilt_runs_carry_their_configs_method_and_dataset_and_curves_not_steps(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "data", **{"loss.name": "contrastive"})
    rid = f"tiny-contrastive-mdr-seed0-{config.fingerprint()}"
    # an older metrics.json that named the table's method and the paper dataset
    _folder(tmp_path, rid, config, {"method": "Triplet", "dataset": "cub200"})
    assert tracking.rebuild_store("smoke")["created"] == 1

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mdr-smoke")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["method"] == "Contrastive+MDR" and run.data.tags["dataset"] == "tiny"
    assert run.info.run_name == f"Contrastive+MDR tiny s0 {config.fingerprint()}"
    assert "percent" in run.data.tags["mlflow.note.content"]
    assert "epoch" not in run.data.metrics and "iteration" not in run.data.metrics
    for key, values in (("reg_level_0", [-2.0, -1.0, 0.0]), ("metric_loss", [0.8, 0.4, 0.8 / 3]),
                        ("regularizer_loss", [0.2, 0.1, 0.2 / 3])):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in history] == pytest.approx(values, rel=1e-12)


def test_a_live_run_logs_curves_and_its_name(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path / "data")
    logger = tracking.MLflowLogger("smoke", "tiny-live", {"method": "Triplet+MDR", "dataset": "tiny"},
                                   "Triplet+MDR lambda 0.1 tiny s0 abc")
    logger.on_train_start(config, tmp_path, 0)
    logger.on_epoch_end({"epoch": 1, "iteration": 3, "loss": 0.5, "reg_level_0": -3.0})
    logger.on_train_end("finished", {}, None)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mdr-smoke").experiment_id])
    assert run.info.run_name == "Triplet+MDR lambda 0.1 tiny s0 abc" and run.data.tags["run_id"] == "tiny-live"
    assert set(run.data.metrics) == {"loss", "reg_level_0"}


def test_a_config_this_code_no_longer_accepts_is_described_by_the_names_it_holds():
    from mdr.describe import describe_config
    from mdr.grid import load_methods

    old = {"seed": 1, "data": {"dataset": "renamed-set"}, "loss": {"name": "contrastive"},
           "regularizer": {"name": "retired"}, "model": {"backbone": "smallcnn", "embedding_dim": 64}}
    name, tags = describe_config(old, load_methods(), "0123abcd")
    assert tags["method"] == "Contrastive+retired" and tags["dataset"] == "renamed-set"
    assert name == "Contrastive+retired renamed-set s1 0123abcd"
