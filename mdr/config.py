"""Typed, validated run configuration: everything one training run reads, nothing else.

A RunConfig is what the grid (mdr/grid.py) resolves for each run; it is written next to the run's
outputs (config.yaml) and hashed into the run's identity. Unknown keys, unknown component names,
and inconsistent values are rejected with messages that name the key and the allowed values.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mdr.registry import UnknownNameError


def _known(lookup: Any, name: str) -> str:
    try:
        lookup(name)
    except UnknownNameError as e:  # a KeyError; pydantic reports only ValueErrors as validation errors
        raise ValueError(str(e)) from None
    return name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class DataConfig(Strict):
    dataset: str = "glyphs"
    root: str = "data"
    image_size: int = Field(256, gt=0, description="prepared cache size: images resized to S x S once")
    crop: int = Field(224, gt=0, description="RandomResizedCrop size in training, CenterCrop in test")
    crop_scale: tuple[float, float] = (0.16, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    crop_interpolation: Literal["lanczos", "bilinear"] = Field(
        "lanczos", description="resampling of the training crop: 'lanczos' as the authors (PIL's Lanczos, "
        "per image), or 'bilinear' (torchvision's antialiased bilinear on tensors)")
    num_workers: int = Field(0, ge=0)
    augment_on: Literal["loader", "device"] = Field(
        "loader", description="where the training crop and flip are done. loader: per image in the DataLoader "
        "(crop_interpolation lanczos or bilinear). device: the loader sends the cached uint8 images, and the batch "
        "is cropped, resized and flipped on the run's device (mdr/data/device_augment.py: the same draws, bilinear "
        "only), so a GPU is not kept waiting on CPU transforms")
    cached_views: int = Field(
        0, ge=0, description="0: train the whole backbone on images. N > 0: freeze the backbone's lower part, "
        "cache its outputs for N augmented views of every training image (mdr/features.py) and train its "
        "upper part and the head on them (the embedded profile's fine-tuning)")
    validation_classes: int = Field(
        0, ge=0, description="hold out this many training classes (the last ones by label) and evaluate on "
        "them instead of the test split: for tuning, so the test classes are never used for selection")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from mdr.data.registry import get_dataset

        return _known(get_dataset, v)

    @model_validator(mode="after")
    def _crop_fits(self) -> "DataConfig":
        if self.crop > self.image_size:
            raise ValueError(f"crop {self.crop} is larger than image_size {self.image_size}")
        return self


class ModelConfig(Strict):
    backbone: str = "bninception"
    pretrained: bool = True
    weights: str | None = Field(None, description="local weights file; overrides the download")
    embedding_dim: int = Field(512, gt=0)
    freeze_bn: bool = True
    normalization: Literal["auto", "batch_mean_distance", "l2", "none"] = Field(
        "auto", description="auto: what the regularizer asks for (docs/method.md §2.2)"
    )
    channels_last: bool = Field(
        False, description="run the backbone in channels-last memory layout (about 30% faster on CPU for the "
        "smoke profile's SmallCNN; a speed setting, results agree to float rounding)")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from mdr.models import BACKBONES

        return _known(BACKBONES.get, v)


class ComponentConfig(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(Strict):
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    lr_milestones: list[int] = Field(default_factory=lambda: [40, 60, 80], description="epochs")
    lr_gamma: float = Field(0.2, gt=0)


class TrainConfig(Strict):
    epochs: int = Field(100, gt=0)
    iterations_per_epoch: int = Field(100, gt=0)
    batch_size: int = Field(128, gt=1)
    images_per_class: int = Field(4, gt=0)
    allow_partial_class: bool = Field(
        False, description="let the last class of a batch contribute fewer images when batch_size is not a "
        "multiple of images_per_class (the authors' SOP/In-Shop setting: 256 = 85 x 3 + 1)")
    device: str = "auto"
    threads: int | None = Field(None, gt=0)
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="arithmetic of the training steps. fp32: float32 throughout, TF32 off for CUDA matmuls "
        "and cuDNN convolutions (the authors' setting). tf32: CUDA matmuls and cuDNN convolutions in TF32 (Ampere "
        "and later; on a CPU it changes nothing, and the run's log says so). bf16: forward, loss and regularizer "
        "under torch.autocast in bfloat16 (pairwise distances in float32). Evaluation embeds and retrieves in "
        "float32 whatever this is. Not fp32: the run id says it (`-bf16-seed0-...`)")

    @model_validator(mode="after")
    def _divisible(self) -> "TrainConfig":
        if self.batch_size % self.images_per_class and not self.allow_partial_class:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by images_per_class {self.images_per_class}; "
                "choose a multiple, or set train.allow_partial_class: true to fill the batch from one more class"
            )
        return self


class EvalConfig(Strict):
    ks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    batch_size: int = Field(256, gt=0)
    every: int = Field(1, gt=0, description="evaluate every N epochs (and at the last): on the test split, or on "
                       "the validation classes when data.validation_classes > 0")
    train_subset: int = Field(0, ge=0, description="also measure Recall@K on this many training images (Figure 4b)")
    protocol: Literal["published", "fair"] = Field(
        "published", description="published: as the authors' code, the test classes are evaluated after every epoch "
        "and the best test epoch is reported (with the final one). fair: the epoch is chosen by Recall@1 on "
        "validation classes carved out of the training classes (data.validation_classes > 0), and the test split "
        "is evaluated once per reported checkpoint, after training (mdr/evaluation.py; docs/protocols.md). "
        "Not published: the run id says it (`-fair-seed0-...`)")


class RunConfig(Strict):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="triplet"))
    regularizer: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="none"))
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _components(self) -> "RunConfig":
        from mdr.losses import LOSSES
        from mdr.regularizers import REGULARIZERS

        for field, registry in (("loss", LOSSES), ("regularizer", REGULARIZERS)):
            component: ComponentConfig = getattr(self, field)
            try:
                validated = registry.validate_params(component.name, component.params)
            except UnknownNameError as e:
                raise ValueError(f"{field}.name: {e}") from None
            except ValidationError as e:
                raise ValueError(f"{field}.params ({component.name}): " + _short_errors(e)) from None
            component.params = validated.model_dump()  # defaults filled in, so the hash sees them
        if self.data.cached_views and not self.model.weights:
            raise ValueError("data.cached_views freezes the backbone's lower part and caches its outputs: it needs "
                             "the pretrained weights file in model.weights (a frozen random net is not cached)")
        if self.data.cached_views and self.model.channels_last:
            raise ValueError("model.channels_last applies to images; with data.cached_views > 0 the model sees "
                             "cached feature vectors: set model.channels_last: false")
        if self.data.augment_on == "device" and self.data.crop_interpolation != "bilinear":
            raise ValueError("data.augment_on device crops in batch with bilinear resampling, but "
                             f"data.crop_interpolation is {self.data.crop_interpolation} (PIL's, per image); set "
                             "data.crop_interpolation: bilinear, or data.augment_on: loader")
        if self.data.augment_on == "device" and self.data.cached_views:
            raise ValueError("data.augment_on device crops images, but with data.cached_views > 0 the model sees "
                             "cached feature vectors; set data.augment_on: loader")
        if self.eval.protocol == "fair" and not self.data.validation_classes:
            raise ValueError("eval.protocol fair chooses the epoch on validation classes held out of the training "
                             "classes, but data.validation_classes is 0; set data.validation_classes to N > 0 (e.g. "
                             "20 of glyphs-cub's 100), or eval.protocol: published")
        bad = [m for m in self.optim.lr_milestones if not 0 < m < self.train.epochs]
        if bad:
            raise ValueError(f"optim.lr_milestones {bad} must lie strictly between 0 and train.epochs {self.train.epochs}")
        return self

    @property
    def normalization(self) -> str:
        if self.model.normalization != "auto":
            return self.model.normalization
        from mdr.regularizers import REGULARIZERS

        return REGULARIZERS.get(self.regularizer.name).factory.normalization  # type: ignore[attr-defined]

    def canonical_json(self) -> str:
        """The config as hashed: every field, less those added after runs were trained whose default
        reproduces those runs exactly (_SAME_AS_BEFORE), so their ids stay valid."""
        data = self.model_dump(mode="json")
        for section, key, default in _SAME_AS_BEFORE:
            if data[section][key] == default:
                del data[section][key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """Short hash of the full resolved config: two runs with the same hash are the same run."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:8]


# (section, key, default): train.precision fp32 and eval.protocol published are how every run trained and
# was evaluated before the fields existed.
_SAME_AS_BEFORE = (("train", "precision", "fp32"), ("eval", "protocol", "published"), ("data", "augment_on", "loader"))


class ConfigError(ValueError):
    """A configuration mistake, with a message that names where and what is allowed."""


def _short_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate_run_config(data: dict[str, Any], source: str) -> RunConfig:
    """Validate a resolved config; raise ConfigError naming `source` (e.g. 'table1 / run 3') and the keys."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid configuration: {_short_errors(e)}") from None
