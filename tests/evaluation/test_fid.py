import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pocketdiff.data import shapes as S
from pocketdiff.errors import WeightsError
from pocketdiff.evaluation.fid import (
    DomainFID,
    ShapesFeatureNet,
    default_weights_path,
    load_feature_net,
    to_model_input,
)

N = 500


def _renders(seed: int, n: int = N) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return S.to_tensor(np.stack([S.render(S.sample_scene(rng), rng=rng) for _ in range(n)]))


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.exp(-0.5 * (torch.arange(-3, 4.0) / sigma) ** 2)
    k = (k[:, None] * k[None]) / k.sum() ** 2
    return F.conv2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), k.expand(3, 1, 7, 7).contiguous(), groups=3)


def test_shipped_weights():
    path = default_weights_path()
    assert path.stat().st_size < 2_000_000
    net = load_feature_net()
    assert 100_000 <= sum(p.numel() for p in net.parameters()) <= 300_000
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, ShapesFeatureNet.num_features)


def test_separates_real_from_degraded():
    real, other = _renders(1), _renders(2)
    fid = DomainFID()
    fid.metric.reset_real_features = False  # compute the real statistics once
    fid.update(real, real=True)

    def score(fake: torch.Tensor) -> float:
        fid.reset()
        fid.update(fake.clamp(-1, 1), real=False)
        return fid.compute()

    noise = torch.randn(other.shape, generator=torch.Generator().manual_seed(0)) * (10 / 127.5)
    scores = {
        "real": score(other),
        "blur": score(_blur(other, 1.0)),
        "noise": score(other + noise),
        "color": score(other * torch.tensor([0.9, 1.0, 1.1]).view(1, 3, 1, 1) + 0.05),
    }
    # Measured: real 8.5, blur 25, noise 211, color 438. Two real sets of 500 differ by sampling alone (the
    # estimator's bias, ~1/N); a 1 px blur triples that; noise and colour shifts are off the scale.
    assert scores["real"] < 12.0, scores
    assert scores["blur"] > 2.5 * scores["real"], scores
    assert min(scores["noise"], scores["color"]) > 10 * scores["real"], scores


def test_input_formats_agree():
    x = _renders(3, 4)
    as_uint8 = ((x + 1) * 127.5).round().byte()
    ref = to_model_input(x)
    assert torch.allclose(to_model_input(as_uint8), ref, atol=1e-6)
    assert torch.allclose(to_model_input(as_uint8.permute(0, 2, 3, 1).numpy()), ref, atol=1e-6)
    assert to_model_input(F.interpolate(x, size=128)).shape == (4, 3, 64, 64)
    with pytest.raises(ValueError):
        to_model_input(torch.zeros(2, 1, 64, 64))


def test_bad_weights(tmp_path):
    with pytest.raises(WeightsError):
        DomainFID(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(WeightsError):
        load_feature_net(tmp_path / "junk.safetensors")
