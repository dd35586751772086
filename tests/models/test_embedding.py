import pytest
import torch
import torch.nn as nn

from mdr.losses.distances import euclidean_pdist
from mdr.models import BACKBONES, build_model


def test_batch_mean_distance_scaling_in_training_only():
    torch.manual_seed(0)
    model = build_model("smallcnn", 16, "batch_mean_distance", freeze_bn=False)
    x = torch.rand(6, 3, 32, 32)
    model.train()
    e = model(x)
    off = ~torch.eye(6, dtype=torch.bool)
    d = torch.cdist(e.double(), e.double())
    # The head divided by a float32 mean of |x|^2 + |y|^2 - 2 x.y distances: each squared distance loses
    # (D + 2) u kappa with kappa = max (|x|^2 + |y|^2) / d^2 (the cancellation), its sqrt half that, and the
    # mean of the 30 pairs adds 30 u. Train-mode BN on the same batch gives the same raw output again.
    raw = model.head(model.features(x)).detach().double()
    sq_norms = raw.pow(2).sum(dim=1)
    kappa = float(((sq_norms[:, None] + sq_norms[None, :])[off] / torch.cdist(raw, raw)[off].pow(2)).max())
    u = 2.0**-24
    assert abs(d[off].mean().item() - 1.0) <= (16 + 2) * u * kappa / 2 + 32 * u
    model.eval()
    raw = model(x)
    assert raw.norm(dim=1).mean() > 0 and not torch.allclose(raw, model.head(model.features(x)) / 2)
    assert torch.allclose(raw, model.head(model.features(x)))


def test_l2_normalisation_in_train_and_eval():
    model = build_model("smallcnn", 8, "l2", freeze_bn=False)
    x = torch.rand(4, 3, 32, 32)
    for mode in (True, False):
        model.train(mode)
        assert torch.allclose(model(x).norm(dim=1), torch.ones(4), atol=1e-5)  # float32: <= (D + 4) u = 7e-7


def test_frozen_batchnorm_stays_in_eval_mode_but_trains_affine():
    model = build_model("resnet18", 8, "none", freeze_bn=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = bns[0].running_mean.clone()
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    assert torch.equal(before, bns[0].running_mean)
    assert bns[0].weight.grad is not None


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_gives_its_feature_dim(name):
    backbone = BACKBONES.create(name)
    size = 64 if name != "bninception" else 96
    backbone.eval()
    with torch.no_grad():
        out = backbone(backbone.preprocess(torch.rand(2, 3, size, size)))
    assert out.shape == (2, backbone.feature_dim)


def test_unknown_backbone_lists_the_allowed_names():
    with pytest.raises(KeyError, match="unknown backbone 'resnet19'; allowed: .*resnet18"):
        BACKBONES.create("resnet19")


def test_euclidean_pdist_matches_cdist():
    x = torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # float64: |a|^2 + |b|^2 - 2 a.b loses <= 7 u64 (|a|^2 + |b|^2) < 1e-13 to cancellation, its sqrt < 1e-13 / d
    # with every d > 1 here; atol 1e-6 is far above that, and squared distances or a lost factor 2 are off by > 0.1
    assert torch.allclose(euclidean_pdist(x), torch.cdist(x, x), rtol=0, atol=1e-6)
