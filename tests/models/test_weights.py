"""mdr.models.weights: the known-weights table, download + cache + verification, local override."""
from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from mdr.models import weights as W


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """(folder served over http://127.0.0.1, base URL, request log)."""
    folder = tmp_path / "www"
    folder.mkdir()
    log: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):  # noqa: N802
            log.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield folder, f"http://127.0.0.1:{httpd.server_address[1]}", log
    finally:
        httpd.shutdown()
        httpd.server_close()


def save_state(path: Path) -> dict[str, torch.Tensor]:
    state = {"conv.weight": torch.arange(12.0).reshape(3, 4), "fc.bias": torch.ones(2)}
    torch.save(state, path)
    return state


def named_by_hash(folder: Path, stem: str) -> Path:
    tmp = folder / "tmp.pth"
    save_state(tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    final = folder / f"{stem}-{prefix}.pth"
    tmp.rename(final)
    return final


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from mdr.data import fetch

    monkeypatch.setattr(fetch.download, "DEFAULT_WAIT", 0.0)
    monkeypatch.setenv("MDR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torchhub"))
    return tmp_path / "cache"


def test_table_matches_torchvision():
    import torchvision.models as tvm

    assert W.KNOWN_WEIGHTS["resnet18"][1][0] == tvm.ResNet18_Weights.IMAGENET1K_V1.url
    assert W.KNOWN_WEIGHTS["resnet50"][1][0] == tvm.ResNet50_Weights.IMAGENET1K_V1.url
    assert W.KNOWN_WEIGHTS["googlenet"][1][0] == tvm.GoogLeNet_Weights.IMAGENET1K_V1.url
    assert W.KNOWN_WEIGHTS["bninception"] == (
        "bn_inception-52deb4733.pth", ("http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",))
    for name, (filename, urls) in W.KNOWN_WEIGHTS.items():
        assert urls[0].endswith("/" + filename)
        src = W.weights_source(name)
        assert src.sha256_prefix and filename.split("-")[-1].startswith(src.sha256_prefix)
    assert W.hash_prefix("bn_inception-52deb4733.pth") == "52deb4733"
    assert W.hash_prefix("resnet50-0676ba61.pth") == "0676ba61"


def test_download_once_then_cached(served, cache, monkeypatch):
    folder, base, log = served
    f = named_by_hash(folder, "tiny")
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "resnet18", (f.name, (f"{base}/missing/{f.name}", f"{base}/{f.name}")))
    state = W.load_pretrained_state_dict("resnet18", progress=False)
    assert torch.equal(state["conv.weight"], torch.arange(12.0).reshape(3, 4))
    assert (cache / "weights" / f.name).is_file()
    n = len(log)
    W.load_pretrained_state_dict("resnet18", progress=False)
    assert len(log) == n  # from the cache, verified, not downloaded again


def test_download_with_wrong_hash(served, cache, monkeypatch):
    folder, base, _ = served
    save_state(folder / "tiny-00000000.pth")  # the name promises a hash the content does not have
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "resnet18", ("tiny-00000000.pth", (f"{base}/tiny-00000000.pth",)))
    with pytest.raises(W.WeightsUnavailableError, match="sha256 starting 00000000"):
        W.load_pretrained_state_dict("resnet18", progress=False)
    assert (cache / "weights" / "tiny-00000000.pth.corrupt").exists()


def test_offline_message(cache, monkeypatch):
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "bninception",
                        ("bn_inception-52deb4733.pth", ("http://127.0.0.1:9/bn_inception-52deb4733.pth",)))
    with pytest.raises(W.WeightsUnavailableError) as err:
        W.load_pretrained_state_dict("bninception", progress=False)
    msg = str(err.value)
    for part in ("bn_inception-52deb4733.pth", "http://127.0.0.1:9/bn_inception-52deb4733.pth",
                 str((cache / "weights").absolute()), "model.weights", "sha256 starting 52deb4733"):
        assert part in msg, part


def test_unknown_name(cache):
    with pytest.raises(W.WeightsUnavailableError, match="known: bninception, googlenet, resnet18, resnet50"):
        W.load_pretrained_state_dict("vgg11")


def test_local_path_override(tmp_path, cache):
    plain = tmp_path / "my_weights.pth"
    save_state(plain)
    assert set(W.load_pretrained_state_dict("resnet18", local_path=str(plain))) == {"conv.weight", "fc.bias"}
    hashed = named_by_hash(tmp_path, "resnet18")
    W.load_pretrained_state_dict("resnet18", local_path=str(hashed))
    wrong = tmp_path / "resnet18-deadbeef.pth"
    save_state(wrong)
    with pytest.raises(W.WeightsUnavailableError, match="damaged"):
        W.load_pretrained_state_dict("resnet18", local_path=str(wrong))
    with pytest.raises(W.WeightsUnavailableError, match="not found"):
        W.load_pretrained_state_dict("resnet18", local_path=str(tmp_path / "nope.pth"))
    not_a_state = tmp_path / "obj.pth"
    torch.save({"x": object}, not_a_state, _use_new_zipfile_serialization=True)
    with pytest.raises(W.WeightsUnavailableError, match="cannot load"):
        W.load_pretrained_state_dict("resnet18", local_path=str(not_a_state))


def test_the_loaded_file_is_recorded_with_what_checked_it(tmp_path, cache):
    from mdr.models.backbones import create_backbone

    hashed = named_by_hash(tmp_path, "resnet18")
    sha = hashlib.sha256(hashed.read_bytes()).hexdigest()
    state, record = W.load_pretrained("resnet18", local_path=str(hashed))
    assert set(state) == {"conv.weight", "fc.bias"}
    assert record == {"file": str(hashed.resolve()), "sha256": sha, "verified": f"the sha256 prefix {sha[:8]} in its name"}
    plain = tmp_path / "my_weights.pth"
    save_state(plain)
    assert W.load_pretrained("resnet18", local_path=str(plain))[1]["verified"] is None  # nothing to check it by
    # the backbone keeps the record (the engine writes it to trained.json and the log); none without weights
    import torchvision

    real = tmp_path / "resnet18-real.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), real)
    assert create_backbone("resnet18", weights=str(real)).pretrained_from == W.weights_record(real, None)
    assert create_backbone("resnet18").pretrained_from is None


def test_torch_hub_cache_is_reused(tmp_path, cache, monkeypatch):
    hub = tmp_path / "torchhub" / "checkpoints"
    hub.mkdir(parents=True)
    f = named_by_hash(hub, "resnet18x")
    monkeypatch.setitem(W.KNOWN_WEIGHTS, "resnet18", (f.name, ("http://127.0.0.1:9/" + f.name,)))
    assert W.weights_path("resnet18", progress=False) == f
    assert not (cache / "weights" / f.name).exists()


def test_backbone_loads_local_torchvision_weights(tmp_path, cache):
    import torchvision

    from mdr.models.backbones import create_backbone

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-local.pth"
    torch.save(ref.state_dict(), path)
    backbone = create_backbone("resnet18", weights=str(path))
    params = dict(backbone.named_parameters())
    key = next(k for k in params if k.endswith("conv1.weight"))
    assert torch.equal(params[key], ref.conv1.weight)
