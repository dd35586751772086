"""Guided DML: the master's training, the student term against a direct computation, state and resume."""
import numpy as np
import pytest
import torch

from mdr.data.loading import CachedImages, train_transform
from mdr.engine import train
from mdr.regularizers import REGULARIZERS
from mdr.regularizers.base import StepContext
from mdr.regularizers.guided import GuidedRegularizer
from tests.conftest import StopAfter, make_blob_dataset, tiny_config


SMALL = {"image_size": 16, "branch_width": 8, "target_dim": 6, "master_iterations": 20, "master_batch": 16}


@pytest.fixture
def blobs(tmp_path):
    prepared = make_blob_dataset(tmp_path / "blobs", 16, classes=6, per_class=6)
    rows = prepared.manifest
    return CachedImages(prepared.root / "images.npy", np.arange(len(rows)), rows["label"].to_numpy(),
                        train_transform(16, (0.5, 1.0), (3 / 4, 4 / 3), True))


def _fixed_triplets(reg, train_set, n=64):
    labels = np.asarray(train_set.labels)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    rng = np.random.default_rng(123)
    batches = []
    for _ in range(4):
        rows, c1, c2 = reg.sample_triplets(members, np.arange(len(classes)), rng)
        images = torch.stack([train_set[int(i)][0] for i in rows])
        y = torch.tensor([classes[c1]] * (2 * reg.master_batch) + [classes[c2]] * reg.master_batch)
        batches.append((images, y))
    return batches


def test_master_training_lowers_its_triplet_loss(blobs):
    reg = GuidedRegularizer(**{**SMALL, "master_epochs": 3}, num_classes=6, embedding_dim=8)
    assert len(reg.master.branches) == 6
    torch.manual_seed(0)
    fixed = _fixed_triplets(reg, blobs)

    def triplet_loss():
        with torch.no_grad():
            return float(np.mean([reg.master_loss(x, y, reg.master_batch)[1].item() for x, y in fixed]))

    before = triplet_loss()
    rng_before = torch.get_rng_state()
    reg.on_train_start(None, blobs, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the master's training uses its own seed
    after = triplet_loss()
    assert after < 0.7 * before
    assert [r["epoch"] for r in reg.master_log] == [1, 2, 3]
    assert reg.master_log[-1]["triplet"] < reg.master_log[0]["triplet"]
    assert bool(reg.master_trained) and not reg.master.training
    assert all(not p.requires_grad and p.grad is None for p in reg.master.parameters())


def test_student_term_equals_a_direct_computation():
    reg = GuidedRegularizer(weight=0.3, target_dim=5, branches=3, branch_width=4, image_size=8,
                            num_classes=100, embedding_dim=6).double()
    reg.master_trained.fill_(True)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(7, 3, 12, 12, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 4, 4, 8, 11, 2, 2])
    emb = torch.randn(7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    got = reg(emb, labels, StepContext(0, 1, 0, images=images))

    total = 0.0
    for i in range(7):
        x = torch.nn.functional.interpolate(images[i:i + 1], size=(8, 8), mode="bilinear", align_corners=False,
                                            antialias=True)
        x = (x - 0.5) / 0.25
        branch = reg.master.branches[int(labels[i]) % 3]
        t = reg.master.head(branch(x))[0]
        total += torch.linalg.vector_norm(reg.proj(emb[i]) - t).item()
    # float64 throughout; one image at a time against the batch may take other kernels, each a few u64 (1e-16)
    # per operation over a few hundred operations: ~1e-14 relative, well inside 1e-12
    assert got.item() == pytest.approx(0.3 * total / 7, rel=1e-12)

    got.backward()
    assert emb.grad.abs().sum() > 0 and reg.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in reg.master.parameters())
    groups = reg.param_groups(1e-3, 1e-5)
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == {id(p) for p in reg.proj.parameters()}


def test_registry_defaults_and_untrained_master_is_refused():
    reg = REGULARIZERS.create("guided", {}, num_classes=11318, embedding_dim=512)
    assert len(reg.master.branches) == 16 and reg.proj.in_features == 512 and reg.proj.out_features == 64
    assert reg.weight == 0.1 and reg.beta == 0.005 and reg.margin == 3.0
    with pytest.raises(RuntimeError, match="not trained"):
        reg(torch.randn(4, 512), torch.arange(4), StepContext(0, 1, 0, images=torch.rand(4, 3, 16, 16)))
    torch.manual_seed(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    GuidedRegularizer(num_classes=10, embedding_dim=8)
    assert torch.equal(torch.rand(3), a)  # building it does not move the global RNG (model init unchanged)


def test_state_dict_round_trip_keeps_the_master(blobs):
    reg = GuidedRegularizer(**{**SMALL, "master_epochs": 1, "master_iterations": 5}, num_classes=6, embedding_dim=8)
    reg.on_train_start(None, blobs, torch.device("cpu"))
    state = reg.state_dict()
    fresh = GuidedRegularizer(**{**SMALL, "seed": 7}, num_classes=6, embedding_dim=8)
    fresh.load_state_dict(state)
    assert bool(fresh.master_trained) and fresh.master_log == reg.master_log
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 5])
    emb = torch.randn(6, 8)
    ctx = StepContext(0, 1, 0, images=images)
    assert fresh(emb, labels, ctx).item() == reg(emb, labels, ctx).item()


def test_trains_and_resumes_exactly_without_retraining_the_master(tiny_data, tmp_path, monkeypatch):
    params = {**SMALL, "master_iterations": 5}
    config = tiny_config(tiny_data, **{"regularizer": {"name": "guided", "params": params}, "train.epochs": 2,
                                       "optim.lr_milestones": [1]})
    straight = train(config, tmp_path / "a", progress=False, echo=False)
    assert straight.history[0]["reg_guided"] > 0 and "reg_master_triplet_last" in straight.history[0]
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "b", progress=False, echo=False, callbacks=[StopAfter(1)])

    def no_retraining(*a, **k):
        raise AssertionError("the master was trained again on resume")

    monkeypatch.setattr(GuidedRegularizer, "train_master", no_retraining)
    resumed = train(config, tmp_path / "b", progress=False, echo=False)
    strip = lambda hist: [{k: v for k, v in r.items() if k != "seconds"} for r in hist]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert any(k.startswith("master.branches.") for k in a["regularizer"])
    for key in ("model", "regularizer"):
        for name, tensor in a[key].items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
