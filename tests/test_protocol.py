"""eval.protocol (docs/protocols.md): `published` as before, bit for bit and id for id; `fair` chooses the
epoch on validation classes and evaluates the test split once per reported checkpoint; the grid's overrides
match the protocol; Table 1 and the regularizers table run both protocols where they say; REPORT.md says how much of a gain survives."""
from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mdr import checkpoint, engine, report_protocols, run_data
from mdr.config import ConfigError, validate_run_config
from mdr.data import loading
from mdr.data.registry import prepared_dir
from mdr.evaluation import evaluate_run
from mdr.grid import PARAMS_DIR, load_grid, run_id
from mdr.retrieval import BEST_EMBEDDINGS, FINAL_EMBEDDINGS, Embeddings
from mdr.data.prepared import write_prepared
from tests.conftest import tiny_config

FAIR = {"eval.protocol": "fair", "data.validation_classes": 2}


@pytest.fixture
def noisy16(tmp_path):
    """`tiny` with 16 classes of 6 images, a class a faint colour under strong noise, so Recall@1 varies from epoch
    to epoch (the blobs of tiny_data give 1.0 at every one): 8 training classes (FAIR holds 2 out, 6 are trained
    on, 4 per batch of 8), 8 test classes."""
    rng = np.random.default_rng(0)
    images, rows = [], []
    for c in range(16):
        colour = rng.integers(0, 256, size=3)
        for i in range(6):
            images.append(np.clip(0.3 * colour + rng.integers(0, 200, size=(16, 16, 3)), 0, 255).astype(np.uint8))
            rows.append({"path": f"n/{c}/{i}.png", "label": c, "class_id": c + 1, "class_name": f"n{c}",
                         "split": "train" if c < 8 else "test"})
    root = tmp_path / "noisy"
    write_prepared(prepared_dir(root, "tiny", 16), pd.DataFrame(rows).assign(index=0), np.stack(images), {"name": "tiny"})
    return root


def test_fair_without_validation_classes_is_one_line_naming_both_keys_and_the_fix(tiny_data):
    data = tiny_config(tiny_data).model_dump(mode="json")
    data["eval"]["protocol"] = "fair"
    with pytest.raises(ConfigError) as e:
        validate_run_config(data, "table x / run 1")
    message = str(e.value)
    assert "\n" not in message and message.startswith("table x / run 1: invalid configuration")
    assert "eval.protocol fair" in message and "data.validation_classes is 0" in message
    assert "set data.validation_classes to N > 0" in message and "eval.protocol: published" in message
    validate_run_config({**data, "data": {**data["data"], "validation_classes": 2}}, "ok")  # the fix is accepted


def test_published_ids_are_those_from_before_the_field_and_fair_ones_say_fair(tiny_data):
    published = tiny_config(tiny_data)
    before = published.model_dump(mode="json")
    del before["eval"]["protocol"], before["train"]["precision"], before["data"]["augment_on"]  # added after runs were trained
    assert published.fingerprint() == hashlib.sha256(
        json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    assert "fair" not in run_id(published)
    fair = tiny_config(tiny_data, **FAIR)
    assert "-16px-fair-seed0-" in run_id(fair)
    # validation classes alone (the tuner's trials) stay published: no suffix
    assert "fair" not in run_id(tiny_config(tiny_data, **{"data.validation_classes": 2}))


def _hits_at_1(emb: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """Leave-one-out nearest neighbours in float64 by plain numpy: (hits, queries whose nearest and second-nearest
    distances lie within 1e-6 of each other, where float32 rounding in faiss may pick the other one)."""
    x = emb.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    hits = int((labels[order[:, 0]] == labels).sum())
    rows = np.arange(len(x))
    near_ties = int((d[rows, order[:, 1]] - d[rows, order[:, 0]] < 1e-6).sum())
    return hits, near_ties


def _test_embeddings(config, state) -> tuple[np.ndarray, np.ndarray]:
    """The test split embedded by the checkpoint's weights, the rows picked here from the manifest."""
    prepared = run_data.load_prepared(config)
    rows = prepared.manifest[prepared.manifest["split"] == "test"]
    images = loading.CachedImages(prepared.root / "images.npy", rows["index"].to_numpy(), rows["label"].to_numpy(),
                                  loading.test_transform(config.data.crop))
    model = engine.build_components(config, int(prepared.manifest["label"].max()) + 1, torch.device("cpu")).model
    model.load_state_dict(state["model"])
    return engine.embed(model, images, 64, torch.device("cpu")), rows["label"].to_numpy()


def test_a_fair_run_picks_the_epoch_on_validation_and_reports_the_test_split_of_its_checkpoints(noisy16, tmp_path):
    # seed 2: here validation R@1 0.5, 0.75, 0.667, 0.667, so best.pt (epoch 2) is not the final checkpoint
    config = tiny_config(noisy16, **FAIR, **{"train.epochs": 4, "optim.lr_milestones": [3], "seed": 2})
    run = tmp_path / "run"
    engine.train(config, run, progress=False, echo=False)
    history = json.loads((run / checkpoint.HISTORY).read_text())
    assert len({r["recall_at_1"] for r in history}) > 1  # a choice to make (not every epoch tied)
    # the first epoch of the highest validation R@1, as the engine breaks ties
    chosen = max(history, key=lambda r: (r["recall_at_1"], -r["epoch"]))
    metrics = evaluate_run(config, run)
    assert metrics["protocol"] == "fair" and metrics["best_epoch"] == chosen["epoch"]
    assert metrics["validation"] == {"epoch": chosen["epoch"], "recall_at_1": chosen["recall_at_1"], "classes": 2}
    # training kept validation embeddings (2 classes x 6 images); the report is of the 8 test classes
    assert len(Embeddings.load(run / FINAL_EMBEDDINGS, epoch=4, fingerprint=config.fingerprint()).query) == 12
    for which, name in (("best", checkpoint.BEST), ("final", checkpoint.CHECKPOINT)):
        emb, labels = _test_embeddings(config, torch.load(run / name, weights_only=True))
        assert len(labels) == 48 and len(np.unique(labels)) == 8
        hits, near_ties = _hits_at_1(emb, labels)
        # the reported R@1 is hits / 48 up to the near-tied queries, which float32 search may resolve otherwise
        assert abs(metrics[which]["recall_at_1"] * 48 - hits) <= near_ties, (which, metrics[which], hits, near_ties)
        assert near_ties <= 2, near_ties  # a bound that leaves the comparison meaningful
    assert np.load(run / "class_centers.npy").shape == (8, 8)  # the test classes' centres, not validation's


def test_a_published_run_reports_what_training_kept_as_before(tiny_data, tmp_path):
    """The published path is the one from before eval.protocol: the kept test embeddings, the same keys."""
    config = tiny_config(tiny_data, **{"regularizer.name": "none"})
    run = tmp_path / "run"
    engine.train(config, run, progress=False, echo=False)
    metrics = evaluate_run(config, run)
    assert set(metrics) == {"fingerprint", "best_epoch", "final_epoch", "best", "final"}
    per_iteration = np.mean([r["seconds"] / 3 for r in json.loads((run / checkpoint.HISTORY).read_text())])
    for which, kept in (("best", BEST_EMBEDDINGS), ("final", FINAL_EMBEDDINGS)):
        emb = Embeddings.load(run / kept, epoch=metrics[f"{which}_epoch"], fingerprint=config.fingerprint())
        expected = {**emb.metrics([1, 2], full=True, device=torch.device("cpu")), "seconds_per_iteration": per_iteration}
        assert metrics[which] == expected


REGULARIZERS = ("none", "l2norm", "mdr", "detreg", "lsd", "guided")
# what the tests' tuned files set: one regularizer knob per method with one (values no profile default has)
TUNED_KNOB = {"mdr": {"weight": 0.123}, "detreg": {"weight": 0.0042}, "lsd": {"alpha": 77.0}, "guided": {"beta": 0.0123}}


def _write_tuned(params, margin=0.31, datasets=("cub200", "cars196"), regularizers=REGULARIZERS):
    """Tuned files as `pipeline tune` writes them (their shape: mdr/tuning/outputs.py), with known values."""
    folder = params / "tuned" / "smoke"
    shutil.rmtree(folder, ignore_errors=True)  # the committed ones are not this test's
    folder.mkdir(parents=True)
    for dataset in datasets:
        for reg in regularizers:
            doc = {"profile": "smoke", "dataset": dataset, "regularizer": {"name": reg, "params": TUNED_KNOB.get(reg, {})},
                   "loss": {"name": "triplet", "params": {"margin": margin}}}
            (folder / f"{dataset}-{reg}.yaml").write_text(yaml.safe_dump(doc))


def _params(root, tables, tuned=True):
    dst = root / "params"
    shutil.copytree(PARAMS_DIR, dst)
    path = dst / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["tables"] = tables
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    if tuned:
        _write_tuned(dst)
    return dst, path, profile


def test_an_override_matches_the_protocol_a_table_axis_sets(tmp_path):
    params, path, profile = _params(tmp_path, ["regularizers"])
    grid = load_grid("smoke", params, use_tuned=False)
    for cell in grid.tables["regularizers"].cells:
        for rid in cell.run_ids:
            config = grid.runs[rid].config
            assert config.eval.protocol == cell.labels["protocol"]
            assert config.data.validation_classes == (10 if cell.labels["protocol"] == "fair" else 0)
            assert ("-fair-" in rid) == (cell.labels["protocol"] == "fair")
            assert grid.runs[rid].tags.get("protocol") == ("fair" if cell.labels["protocol"] == "fair" else None)
    # a later override on the protocol wins, as any later override does
    profile["overrides"].append({"when": {"protocol": "fair", "dataset": "cars196"}, "set": {"data.validation_classes": 7}})
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    grid = load_grid("smoke", params, use_tuned=False)
    seen = {(c.labels["dataset"], grid.runs[c.run_ids[0]].config.data.validation_classes)
            for c in grid.tables["regularizers"].cells if c.labels["protocol"] == "fair"}
    assert seen == {("cub200", 10), ("cars196", 7)}


def test_both_protocols_run_side_by_side_where_the_tables_say_and_share_their_runs(tmp_path):
    params, _, _ = _params(tmp_path, ["table1", "regularizers"])
    grid = load_grid("smoke", params, use_tuned=False)
    table1, regs = grid.tables["table1"], grid.tables["regularizers"]
    # Table 1: both protocols on CUB and Cars, the published one alone on SOP and In-Shop (its `exclude`)
    fair = {(c.labels["dataset"], c.labels["method"]) for c in table1.cells if c.labels["protocol"] == "fair"}
    assert fair == {(d, m) for d in ("cub200", "cars196")
                    for m in ("Triplet", "Triplet+L2Norm", "Triplet+MDR", "Triplet+MDR†")}
    assert len(table1.cells) == 4 * 4 + 2 * 4
    # the regularizers table: both protocols with Triplet, the published one with Contrastive and Margin
    fair_regs = [c for c in regs.cells if c.labels["protocol"] == "fair"]
    assert {c.labels["loss"] for c in fair_regs} == {"triplet"} and len(fair_regs) == 2 * 6
    fair_ids = {rid for c in fair_regs for rid in c.run_ids}
    assert len(fair_ids) == 2 * 6 * 5 and all(grid.runs[rid].config.eval.protocol == "fair" for rid in fair_ids)
    # Table 1's fair Triplet, +L2Norm and +MDR cells are the regularizers table's runs; only MDR† adds its own
    mine = {rid for c in table1.cells if c.labels["protocol"] == "fair" for rid in c.run_ids}
    assert {grid.runs[rid].config.data.crop for rid in mine - fair_ids} == {36} and len(mine - fair_ids) == 2 * 5
    # a published cell keeps the run id it had before the protocol axis existed (no "-fair-", no new hash)
    published = {rid for c in table1.cells if c.labels["protocol"] == "published" for rid in c.run_ids}
    assert not any("-fair-" in rid for rid in published)


def test_a_table_s_exclude_names_axes_and_values_it_has(tmp_path):
    from mdr.grid import ConfigError

    params, _, _ = _params(tmp_path, ["table1"])
    table = params / "tables" / "table1.yaml"
    text = table.read_text()
    table.write_text(text.replace("{dataset: sop, protocol: fair}", "{datasets: sop, protocol: fair}"))
    with pytest.raises(ConfigError, match=r"exclude\[0\]: 'datasets' is not an axis of the table; allowed: "):
        load_grid("smoke", params, use_tuned=False)
    table.write_text(text.replace("{dataset: sop, protocol: fair}", "{dataset: sop, protocol: fiar}"))
    with pytest.raises(ConfigError, match=r"exclude\[0\]: 'fiar' is not a value of axis protocol; allowed: published, fair"):
        load_grid("smoke", params, use_tuned=False)


def test_fair_runs_read_their_tuned_files_and_published_runs_do_not(tmp_path):
    params, _, _ = _params(tmp_path, ["regularizers"])
    grid = load_grid("smoke", params, use_tuned=False)
    for cell in grid.tables["regularizers"].cells:
        if cell.labels["loss"] != "triplet":  # the tuned files are Triplet's (their `loss`)
            continue
        reg, fair = cell.labels["regularizer"], cell.labels["protocol"] == "fair"
        for rid in cell.run_ids:
            config = grid.runs[rid].config
            assert (config.loss.params["margin"] == 0.31) == fair  # the tuned margin, fair runs only
            for knob, value in TUNED_KNOB.get(reg, {}).items():
                assert (config.regularizer.params[knob] == value) == fair
            assert grid.tuned_input(rid) == (str(params / "tuned" / "smoke" / f"{cell.labels['dataset']}-{reg}.yaml")
                                             if fair else None)
    # the run id hashes the tuned values: another tuned margin is another run, never a silently reused one
    before = {rid for c in grid.tables["regularizers"].cells if c.labels["protocol"] == "fair" for rid in c.run_ids}
    _write_tuned(params, margin=0.32)
    after = load_grid("smoke", params, use_tuned=False)
    again = {rid for c in after.tables["regularizers"].cells if c.labels["protocol"] == "fair" for rid in c.run_ids}
    assert len(again) == len(before) == 60 and not again & before
    assert len(after.fair_tuned_files()) == 12 and not after.awaiting_tuning


def test_a_fair_cell_waits_for_its_tuned_file_and_the_dag_says_so(tmp_path):
    from mdr.needs import announce

    params, _, _ = _params(tmp_path, ["regularizers"], tuned=False)
    _write_tuned(params, datasets=("cub200",))
    grid = load_grid("smoke", params, use_tuned=False)
    cells = {(c.labels["dataset"], c.labels["protocol"]) for c in grid.tables["regularizers"].cells}
    assert ("cars196", "fair") not in cells and {("cub200", "fair"), ("cars196", "published")} <= cells
    missing = {str(params / "tuned" / "smoke" / f"cars196-{r}.yaml") for r in REGULARIZERS}
    assert set(grid.awaiting_tuning) == missing and all(len(v) == 1 for v in grid.awaiting_tuning.values())
    assert missing < set(grid.fair_tuned_files()) and len(grid.fair_tuned_files()) == 12  # `all` asks for all 12
    notes = [line for line in announce(grid) if "wait for their tuned settings" in line]
    assert len(notes) == 1 and notes[0].startswith("note: 6 fair cells wait for their tuned settings (6 files: ")
    assert "left out of every table" in notes[0] and "`snakemake tune_fair`" in notes[0]
    assert "run the same command again afterwards" in notes[0]
    _write_tuned(params)
    assert not load_grid("smoke", params, use_tuned=False).awaiting_tuning


def _comparison(first, dataset, protocol, diff, low, high, metric="recall_at_1", loss="triplet"):
    return {"table": "regularizers", "loss": loss, "dataset": dataset, "protocol": protocol, "first": first, "second": "none",
            "metric": metric, "diff": diff, "ci_low": low, "ci_high": high, "n": "3"}


def test_the_report_section_says_how_much_of_a_published_gain_survives():
    frame = pd.DataFrame.from_records([
        _comparison("mdr", "cub200", "published", 5.0, 3.0, 7.0), _comparison("mdr", "cub200", "fair", 2.0, -1.0, 5.0),
        _comparison("lsd", "cub200", "published", 1.0, -1.0, 3.0), _comparison("lsd", "cub200", "fair", 0.5, -2.0, 3.0),
        _comparison("mdr", "cars196", "published", 4.0, 1.0, 7.0),
        _comparison("mdr", "cars196", "fair", math.nan, math.nan, math.nan),  # fair runs not finished
        _comparison("guided", "cub200", "published", 9.0, 8.0, 10.0, loss="contrastive"),  # not Triplet: not read
    ])
    rows = report_protocols.survival(frame).set_index(["regularizer", "dataset"])
    assert rows.loc[("mdr", "cub200"), "share"] == pytest.approx(0.4)  # 2 / 5, exact in binary up to rounding
    assert math.isnan(rows.loc[("lsd", "cub200"), "share"]) and math.isnan(rows.loc[("mdr", "cars196"), "share"])
    lines = report_protocols.survival_markdown(frame)
    assert lines[0] == report_protocols.HEADING
    assert "| mdr | cub200 | R@1 | +5.0 [+3.0, +7.0] | +2.0 [-1.0, +5.0] | 40% |" in lines
    assert f"| lsd | cub200 | R@1 | +1.0 [-1.0, +3.0] | +0.5 [-2.0, +3.0] | {report_protocols.NO_GAIN} |" in lines
    assert "| mdr | cars196 | R@1 | +4.0 [+1.0, +7.0] | not run | — |" in lines
    assert not any(line.startswith("| guided |") for line in lines)
    assert report_protocols.survival_markdown(frame.iloc[0:0]) == []


def test_the_report_renders_both_protocols_side_by_side_and_the_section_from_the_runs(tmp_path, monkeypatch):
    from mdr.report import write_report, write_table

    params, path, profile = _params(tmp_path, ["regularizers"])
    grid = load_grid("smoke", params, use_tuned=False)
    # R@1 per seed: none 50/60/55/52/58 %; mdr +4.0 points published (per seed 3.9, 4.0, 4.1, 3.95, 4.05: sd 0.079,
    # t(4) 2.776, CI ±0.098), a quarter of that fair (CI ±0.025); the rest as none
    base = {0: 0.50, 1: 0.60, 2: 0.55, 3: 0.52, 4: 0.58}
    shift = {0: 0.039, 1: 0.040, 2: 0.041, 3: 0.0395, 4: 0.0405}
    for cell in grid.tables["regularizers"].cells:
        gain = {"published": 1.0, "fair": 0.25}[cell.labels["protocol"]] if cell.labels["regularizer"] == "mdr" else 0.0
        for rid in cell.run_ids:
            seed = grid.runs[rid].config.seed
            value = {"recall_at_1": base[seed] + gain * shift[seed], "map_at_r": 0.3}
            folder = tmp_path / "runs" / "smoke" / rid
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"best_epoch": 1, "best": value, "final": value}))
    monkeypatch.chdir(tmp_path)  # results/<profile>/ is relative to the working directory
    table = write_table(grid, "regularizers", tmp_path / "runs")["md"].read_text()
    for dataset in ("cub200", "cars196"):
        for protocol in ("published", "fair"):
            assert f"### dataset = {dataset}, protocol = {protocol}" in table
    report = write_report(grid, tmp_path / "runs").read_text()
    section = report[report.index(report_protocols.HEADING):report.index("## Tables")]
    # the fair gain is a quarter of the published one: 1.0 / 4.0 points
    assert "| mdr | cub200 | R@1 | +4.0 [+3.9, +4.1] | +1.0 [+1.0, +1.0] | 25% |" in section
    assert f"| lsd | cars196 | R@1 | +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] | {report_protocols.NO_GAIN} |" in section
    # per regularizer, then dataset: mdr's rows together
    assert section.index("| mdr | cub200 | R@1") < section.index("| mdr | cars196 | R@1") < section.index("| detreg |")
