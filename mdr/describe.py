"""What a run is, in words: the tags and the name MLflow shows for it (mdr/tracking.py logs them).

A tag says what ran, read from the run's resolved config, never from the table that asked for it: a
table's `fixed: {method: Triplet}` only supplies defaults when its axes vary the loss or regularizer.
  method         base loss + regularizer as params/methods.yaml names them ("Contrastive+MDR"), then the
                 head's normalisation when the config overrides the regularizer's own, then "†" for a run
                 at a larger image-size preset than the profile's default (the paper's 256 px rows)
  dataset        the dataset the run trained on (glyphs, cub200, ...)
  stands_in_for  the paper datasets whose table cells this run fills (cub200,cars196,...), only from the grid
Run names lead with what varies (the table's axis values beyond the method, then the method), then the real
dataset, seed and config hash: MLflow's run list shows only the first ~25 characters. Where the dataset leads
(each paper dataset has its own), it is written without the prefix all the grid's datasets share ("cub" for
glyphs-cub in the smoke profile), so the words after it still fit in those 25 characters.
"""
from __future__ import annotations

import os
from typing import Any

from mdr.config import RunConfig
from mdr.regularizers import REGULARIZERS

# Axes whose values the method tag already says; every other axis value goes into the name.
METHOD_AXES = ("dataset", "method", "loss", "regularizer")


def _display_names(methods: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Loss and regularizer display names as params/methods.yaml spells them ("Triplet", "MDR")."""
    losses, regularizers = {}, {"none": ""}
    for name, m in methods.items():
        base, _, reg = name.partition("+")
        if m.regularizer == "none":
            losses.setdefault(m.loss, base)
        elif reg:
            regularizers.setdefault(m.regularizer, reg)
    return losses, regularizers


def method_label(config: RunConfig, methods: dict[str, Any], dagger: bool = False) -> str:
    """E.g. "Contrastive+MDR", "Triplet+MDR†", "Triplet (l2 head)"; registry names where methods.yaml has none."""
    losses, regularizers = _display_names(methods)
    loss, reg = config.loss.name, config.regularizer.name
    label = losses.get(loss, loss)
    reg_label = regularizers.get(reg, reg)
    if reg_label:
        label += f"+{reg_label}"
    if config.normalization != REGULARIZERS.get(reg).factory.normalization:  # the config overrides the head
        label += f" ({config.normalization} head)"
    return label + ("†" if dagger else "")


def config_tags(config: RunConfig, methods: dict[str, Any], dagger: bool = False) -> dict[str, str]:
    """The tags a run's config alone tells (a run folder the grid no longer knows gets these)."""
    return {"method": method_label(config, methods, dagger), "loss": config.loss.name,
            "regularizer": config.regularizer.name, "normalization": config.normalization,
            "dataset": config.data.dataset, "backbone": config.model.backbone,
            "embedding_dim": str(config.model.embedding_dim), "seed": str(config.seed)}


def run_name(tags: dict[str, str], extras: list[str], fingerprint: str, leading_dataset: str | None = None) -> str:
    """`leading_dataset` (the dataset as the name shows it) leads when given; else the dataset follows the method."""
    lead = [leading_dataset] if leading_dataset else []
    rest = [] if leading_dataset else [tags["dataset"]]
    return " ".join([*lead, *extras, tags["method"], *rest, f"s{tags['seed']}", fingerprint])


def _short_dataset_names(datasets: list[str]) -> dict[str, str]:
    """Each name without the "<word>-" prefix every one of them shares (glyphs-cub -> cub); unchanged if none."""
    prefix = os.path.commonprefix(datasets)
    prefix = prefix[: prefix.rfind("-") + 1]
    return {d: d[len(prefix):] or d for d in datasets}


def _axis_words(table, labels: dict[str, str]) -> list[str]:
    """The cell's values of the axes beyond the method; a number gets its axis name, cut short ("dim 64")."""
    words = []
    for axis, label in labels.items():
        if axis in METHOD_AXES:
            continue
        numeric = table.definition.axis(axis).values is not None and label.replace(".", "", 1).isdigit()
        words.append(f"{axis[:3]} {label}" if numeric else label)
    return words


def describe_grid(grid) -> dict[str, tuple[str, dict[str, str]]]:
    """run id -> (MLflow run name, tags) for every run of the grid."""
    stands_in: dict[str, list[str]] = {}
    extras: dict[str, list[str]] = {}
    for name, table in grid.tables.items():
        for cell in table.cells:
            words = _axis_words(table, cell.labels)
            for rid in cell.run_ids:
                logical = stands_in.setdefault(rid, [])
                if cell.facts["dataset"] not in logical:
                    logical.append(cell.facts["dataset"])
                if words and not extras.get(rid):
                    extras[rid] = words
    # Where each paper dataset has its own real dataset (paper profile), the dataset tells a table's columns
    # apart and leads; where several share a stand-in (glyphs in smoke), it tells nothing and goes last.
    dataset_first = len(set(grid.profile.datasets.values())) == len(grid.profile.datasets)
    short = _short_dataset_names(sorted({spec.config.data.dataset for spec in grid.runs.values()}))
    out = {}
    for rid, spec in grid.runs.items():
        dagger = int(spec.tags.get("image_size", grid.profile.default_image_size)) != grid.profile.default_image_size
        tags = {**config_tags(spec.config, grid.methods, dagger), "stands_in_for": ",".join(stands_in[rid]),
                "image_size": spec.tags.get("image_size", ""), "tables": ",".join(spec.tables)}
        out[rid] = (extras.get(rid, []), tags)
    # A run that no axis sets apart from another (e.g. figure4b's, which differ by its `fixed` settings) is
    # named by its only table.
    def leading(tags: dict[str, str]) -> str | None:
        return short[tags["dataset"]] if dataset_first else None

    base = [run_name(tags, words, "", leading(tags)) for words, tags in out.values()]
    for (rid, (words, tags)), name in zip(list(out.items()), base):
        tables = grid.runs[rid].tables
        if not words and base.count(name) > 1 and len(tables) == 1:
            words = tables
        out[rid] = (run_name(tags, words, grid.runs[rid].config.fingerprint(), leading(tags)), tags)
    return out


def describe_config(config: dict[str, Any], methods: dict[str, Any], fingerprint: str) -> tuple[str, dict[str, str]]:
    """Name and tags of a run known only by its folder's config.yaml. A config this code no longer accepts (a
    dataset or component since renamed) is still described by the names it holds."""
    from pydantic import ValidationError

    try:
        tags = config_tags(RunConfig.model_validate(config), methods)
    except ValidationError:
        losses, regularizers = _display_names(methods)

        def section(key: str) -> dict[str, Any]:
            return config.get(key) if isinstance(config.get(key), dict) else {}

        loss, reg = str(section("loss").get("name")), str(section("regularizer").get("name"))
        reg_label = regularizers.get(reg, reg)
        tags = {"method": losses.get(loss, loss) + (f"+{reg_label}" if reg_label else ""), "loss": loss,
                "regularizer": reg, "dataset": str(section("data").get("dataset")),
                "backbone": str(section("model").get("backbone")),
                "embedding_dim": str(section("model").get("embedding_dim")), "seed": str(config.get("seed"))}
    return run_name(tags, [], fingerprint), tags


def runs_in_words(grid, name: str) -> str:
    """What a table's runs are, for its title lines: "glyphs-cub, glyphs-cars · glyphnet-m (for bninception) ·
    128-d · 32 px crops · 5 seeds". Read from the resolved configs, so a profile's stand-ins are named."""
    table = grid.tables[name]
    specs = [grid.runs[r] for c in table.cells for r in c.run_ids]
    if not specs:
        return "no runs"
    datasets = list(dict.fromkeys(s.config.data.dataset for s in specs))
    stand_in_of = {embedded: paper for paper, embedded in (grid.profile.backbones or {}).items()}
    backbones = [b + (f" (for {stand_in_of[b]})" if b in stand_in_of else "")
                 for b in dict.fromkeys(s.config.model.backbone for s in specs)]
    dims = sorted({s.config.model.embedding_dim for s in specs})
    crops = sorted({s.config.data.crop for s in specs})
    seeds = max(len(c.run_ids) for c in table.cells)
    return " · ".join([", ".join(datasets), ", ".join(backbones), "/".join(map(str, dims)) + "-d",
                       "/".join(map(str, crops)) + " px crops", f"{seeds} seed{'s' if seeds > 1 else ''}"])
