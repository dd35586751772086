"""The smoke profile as it is (the paper in miniature), end to end through Snakemake on tiny stand-ins.

The DAG's own pieces run for real: the `pretrain` rule trains glyphnet-m on a 4-class stand-in for the
prepared glyphs-imagenet (its default epochs: seconds on 16 images), the runs load its weights, freeze the
lower part and cache its outputs (mdr/features.py), train in one job of several runs (runs_per_job), are
evaluated and aggregated. Only the sizes shrink: one table (table1's Triplet on cub200 ->
glyphs-cub), seeds [0, 1], one epoch of two steps, and both prepared datasets pre-placed, READY included,
where the `prepare` rule writes them (data/prepared/<name>-36px/READY), so Snakemake does not render them.
"""
from __future__ import annotations

import shutil

import pytest
import yaml

from mdr.data.recipes.glyphs import generate_glyphs
from mdr.data.registry import prepared_dir
from mdr.grid import PARAMS_DIR
from mdr.pretrain import PRETRAIN_DATASET, PRETRAIN_IMAGE_SIZE
from tests.conftest import make_blob_dataset
from tests.pipeline.test_workflow import SNAKEMAKE, run
from tests.profiles import smoke_path

WEIGHTS = "data/pretrained/glyphnet-m.pt"  # what the profile's default backbone (bninception) loads
# the DAG up to one table (pretrain, tracking-init, train, evaluate, aggregate); the report and MLflow's
# at-end logging are test_workflow's
TABLE = "results/smoke/table1.md"


def miniature_params(dst):
    """params/ with the smoke profile's content kept and its sizes shrunk to seconds."""
    shutil.copytree(PARAMS_DIR, dst)
    path = smoke_path(dst)
    profile = yaml.safe_load(path.read_text())
    profile["seeds"] = [0, 1]
    profile["tables"] = ["table1"]
    d = profile["defaults"]
    d["data"]["cached_views"] = 2
    d["train"].update(epochs=1, iterations_per_epoch=2, batch_size=8, images_per_class=2)
    d["optim"]["lr_milestones"] = []
    d["eval"].update(ks=[1, 2], batch_size=64, every=1)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    table = dst / "tables" / "table1.yaml"
    doc = yaml.safe_load(table.read_text())
    doc["axes"] = {"dataset": ["cub200"], "method": {"choices": {"Triplet": doc["axes"]["method"]["choices"]["Triplet"]}}}
    doc["columns"], doc["exclude"] = ["dataset"], []  # the published protocol alone
    doc.pop("comparisons", None)
    table.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


@pytest.mark.slow
def test_snakemake_pretrains_once_caches_features_once_and_a_rerun_does_nothing(tmp_path):
    work = tmp_path
    miniature_params(work / "params")
    data = work / "data"
    generate_glyphs(prepared_dir(data, PRETRAIN_DATASET, PRETRAIN_IMAGE_SIZE), image_size=PRETRAIN_IMAGE_SIZE,
                    images_per_class=6, num_classes=4, closed_set_train=4, name=PRETRAIN_DATASET, progress=False)
    make_blob_dataset(prepared_dir(data, "glyphs-cub", 36), 36, classes=8, per_class=6)
    first = run(SNAKEMAKE + ["--cores", "2", "-d", str(work), TABLE], work)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "rule prepare:" not in log  # the pre-placed stand-ins are taken as prepared
    assert log.count("rule pretrain:") == 1
    assert sorted(p.name for p in (data / "pretrained").iterdir()) == ["glyphnet-m.json", "glyphnet-m.pt"]
    configs = [yaml.safe_load(p.read_text()) for p in sorted((work / "runs" / "smoke").glob("*/config.yaml"))]
    assert len(configs) == 2 and sorted(c["seed"] for c in configs) == [0, 1]
    for c in configs:
        assert c["model"]["weights"] == WEIGHTS and c["model"]["backbone"] == "glyphnet-m"
        assert c["data"]["dataset"] == "glyphs-cub" and c["data"]["cached_views"] == 2
    # one cache for the one (dataset, backbone, crop): both seeds' runs read it
    caches = [p.name for p in (data / "features").iterdir() if p.is_dir()]
    assert len(caches) == 1 and caches[0].startswith("glyphs-cub-36px-glyphnet-m-"), caches
    assert (data / "features" / caches[0] / "READY").is_file()
    assert log.count("features: computing") == 1, log[-3000:]
    assert "Triplet" in (work / TABLE).read_text()
    weights_before = (work / WEIGHTS).stat().st_mtime_ns
    second = run(SNAKEMAKE + ["--cores", "2", "-d", str(work), TABLE], work)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert "Nothing to be done" in second.stdout + second.stderr
    assert (work / WEIGHTS).stat().st_mtime_ns == weights_before
