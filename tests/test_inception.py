"""The FID Inception: loading from a local file only, and (pytest -m bench, in the bench venv)
the same features as pytorch-fid's InceptionV3 given the same (random) weights."""
import numpy as np
import pytest
import torch

from diffusionlab.evaluation.inception import WEIGHTS_ENV, FIDInception, load_inception


def random_inception(seed=0) -> FIDInception:
    torch.manual_seed(seed)
    m = FIDInception()
    for mod in m.modules():  # non-trivial batch-norm statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    return m.eval()


def test_missing_weights_say_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases"):
        load_inception()
    with pytest.raises(FileNotFoundError, match="looked for"):
        load_inception(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not the FID Inception"):
        load_inception(bad)


def test_weights_round_trip_through_a_file_and_the_environment(monkeypatch, tmp_path):
    m = random_inception()
    sd = dict(m.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # the file also has fc
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    loaded = load_inception()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
        assert loaded(x).shape == (2, 2048)


@pytest.mark.bench
def test_features_equal_pytorch_fid_with_the_same_weights(monkeypatch):
    inception = pytest.importorskip("pytorch_fid.inception", reason="pytorch-fid is in the bench venv (make bench-venv)")
    ours = random_inception(1)
    sd = dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1008, 2048, generator=g), torch.randn(1008, generator=g)
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: sd)  # nothing downloads
    ref = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                normalize_input=True, use_fid_inception=True).eval()
    for shape in [(3, 3, 299, 299), (4, 3, 32, 32), (2, 1, 28, 28), (2, 3, 400, 300)]:
        x = torch.rand(*shape, generator=g)
        with torch.no_grad():
            a = ours(x).double()
            b = ref(x.repeat(1, 3 // shape[1], 1, 1))[0].flatten(1).double()
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (shape, float((a - b).abs().max()))
    assert np.isfinite(a.numpy()).all()
