"""Training images on the device or in pinned host memory: batches equal plain indexing, bad input is named."""

import pytest
import torch

from contrastkit.data.placement import ResidentImages
from contrastkit.errors import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def images(n=50):
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("placement", ["auto", "device", "host"])
def test_cpu_batches_are_plain_indexing(placement):
    x = images()
    resident = ResidentImages(x, "cpu", placement)
    assert resident.where == "host" and not resident.pinned and resident.index_device.type == "cpu"
    idx = torch.tensor([3, 0, 49, 3])
    assert torch.equal(resident.batch(idx), x[idx])
    assert len(resident) == 50 and "50 images" in resident.describe()


def test_bad_input_names_the_problem():
    with pytest.raises(ConfigError, match="placement 'gpu' is unknown; choose one of: auto, device, host"):
        ResidentImages(images(), "cpu", "gpu")
    with pytest.raises(ConfigError, match=r"uint8 \(N, C, H, W\) tensor, got torch.float32 \(2, 8, 8\)"):
        ResidentImages(torch.zeros(2, 8, 8), "cpu")


@cuda
def test_pinned_host_batches_match_and_never_reuse_a_buffer_in_flight():
    x = images(4000)
    resident = ResidentImages(x, "cuda", "host")
    assert resident.where == "pinned host" and not resident.images.is_cuda
    g = torch.Generator().manual_seed(1)
    outs, idxs = [], []
    for _ in range(20):  # many batches queued without synchronising: the staging buffers alternate
        idx = torch.randint(0, 4000, (512,), generator=g)
        idxs.append(idx)
        outs.append(resident.batch(idx))
    torch.cuda.synchronize()
    for idx, out in zip(idxs, outs):
        assert out.device.type == "cuda" and torch.equal(out.cpu(), x[idx])


@cuda
def test_auto_keeps_small_sets_on_the_device():
    resident = ResidentImages(images(), "cuda", "auto")
    assert resident.where == "device" and resident.images.is_cuda
    idx = torch.tensor([1, 2], device="cuda")
    assert torch.equal(resident.batch(idx).cpu(), images()[[1, 2]])
