"""The ImageFolder pipeline's stages: torchvision v2 transforms seeded per image, uint8 batches out of the
workers, normalisation and cutout where the batch goes, channels_last batches and networks (CUDA runs only).

The reference of each stage is written here with plain torchvision / PIL / torch calls.
"""

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from fastdarts.bench import write_jpeg_folder
from fastdarts.data import IMAGENET_MEAN, IMAGENET_STD, DataConfig, build_search_data, build_train_data
from fastdarts.data.loader import _sample_keys
from fastdarts.spaces import build_supernet

SIZE, CUTOUT = 16, 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 3 classes x 8 JPEGs of 40 px: 21 training images after the held-out 10 %.
    return write_jpeg_folder(str(tmp_path_factory.mktemp("jpegs")), 3, 8, 40)


def _reference_image(path: str, seed: int | None, jitter=None) -> torch.Tensor:
    """One image as torchvision's classic ImageNet recipe makes it (PIL in, seeded torch RNG), then
    normalised and, for a training image, quark0's cutout after normalisation."""
    img = Image.open(path).convert("RGB")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    if seed is None:
        x = v2.Compose([v2.Resize(round(SIZE / 0.875)), v2.CenterCrop(SIZE), v2.PILToTensor()])(img)
        return (x.float() / 255 - mean) / std
    torch.manual_seed(seed)
    x = v2.Compose([v2.RandomResizedCrop(SIZE, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
                    v2.RandomHorizontalFlip(0.5), *([v2.ColorJitter(*jitter)] if jitter else []),
                    v2.PILToTensor()])(img)
    cy, cx = torch.randint(0, SIZE, (2,)).tolist()
    x = (x.float() / 255 - mean) / std
    h = CUTOUT // 2
    x[:, max(0, cy - h):cy + h, max(0, cx - h):cx + h] = 0.0
    return x


@pytest.mark.parametrize("workers,jitter", [(0, None), (2, None), (2, [0.4, 0.4, 0.4, 0.2])])
def test_batches_are_the_torchvision_recipe_per_image_seeds(folder, workers, jitter):
    data = build_search_data(DataConfig(name=folder, batch_size=4, image_size=SIZE, cutout=CUTOUT,
                                        num_workers=workers, color_jitter=jitter), seed=5)
    try:
        paths = data.train.source.dataset.paths
        for epoch in (0, 1):
            idx, aug_seed, _ = next(data.train._specs(epoch, 1))
            x, y = list(data.train.iterate(epoch))[1]
            want = torch.stack([_reference_image(paths[i], s, jitter) for i, s in _sample_keys(idx, aug_seed)])
            # The same float32 operations in the same order: equal bit for bit.
            assert torch.equal(x, want)
            assert torch.equal(y, data.train.labels.new_tensor([data.train.source.dataset.labels[i] for i in idx]))
        x, _ = next(iter(data.test))
        keys = _sample_keys(data.test.indices[:4], None)
        assert torch.equal(x, torch.stack([_reference_image(data.test.source.dataset.paths[i], s) for i, s in keys]))
    finally:
        data.close()


def test_an_in_process_loader_leaves_the_global_generator_alone(folder):
    data = build_search_data(DataConfig(name=folder, batch_size=4, image_size=SIZE, num_workers=0), seed=5)
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    next(iter(data.train))
    assert torch.equal(torch.rand(3), want)


def test_folder_batches_leave_the_decoder_as_uint8(folder):
    data = build_search_data(DataConfig(name=folder, batch_size=4, image_size=SIZE, cutout=CUTOUT,
                                        num_workers=2), seed=5)
    try:
        next(iter(data.train))  # starts the workers; then their raw batches, as they cross to this process
        raw = next(data.train._stream.start(data.train._specs(0), len(data.train)))
        x_u8, y, centres = raw
        assert x_u8.dtype == torch.uint8 and x_u8.shape == (4, 3, SIZE, SIZE)
        assert centres.shape == (4, 2) and centres.dtype == torch.long
        x, y2 = data.train.source.finish(raw, torch.device("cpu"))
        assert x.dtype == torch.float32 and torch.equal(y2, y)
        assert torch.equal(x, data.train.batch(0, 0)[0])
    finally:
        data.close()


def test_channels_last_batches_hold_the_same_values(folder):
    for name in (folder, "digits"):
        plain = build_train_data(DataConfig(name=name, batch_size=4, image_size=SIZE), seed=1)
        nhwc = build_train_data(DataConfig(name=name, batch_size=4, image_size=SIZE), seed=1, channels_last=True)
        (x1, y1), (x2, y2) = plain.train.batch(0, 0), nhwc.train.batch(0, 0)
        assert x2.is_contiguous(memory_format=torch.channels_last) and not x2.is_contiguous()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("method", ["darts", "pcdarts"])
def test_channels_last_supernet_matches_contiguous_in_float64(method):
    torch.manual_seed(0)
    net = build_supernet("darts", method, 4, 10, 3, backend="cpp").double()
    net_cl = build_supernet("darts", method, 4, 10, 3, backend="cpp").double()
    net_cl.load_state_dict(net.state_dict())
    with torch.no_grad():  # α/β are not in the state_dict (quark0's layout)
        for a_cl, a in zip(net_cl.arch_parameters(), net.arch_parameters(), strict=True):
            a_cl.copy_(a)
    net_cl = net_cl.to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in net_cl.parameters())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    outs = []
    for model, inp in ((net, x), (net_cl, x.contiguous(memory_format=torch.channels_last))):
        loss = torch.nn.functional.cross_entropy(model(inp), y)
        grads = torch.autograd.grad(loss, list(model.parameters()) + list(model.arch_parameters()))
        outs.append((loss.detach(), grads))
    # The two layouts run the same sums in different orders (convolution algorithms): a float64 rounding
    # difference, eps 2.2e-16 times sums of a few thousand terms, far below 1e-10 relative.
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-10, atol=1e-12)
    for g_cl, g in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(g_cl, g, rtol=1e-10, atol=1e-12)


def test_channels_last_runs_are_refused_off_cuda(folder, tmp_path):
    # On CPU PyTorch's float32 channels_last weight gradient of a stride-2 1x1 convolution corrupts the
    # heap with 2 threads at odd batch sizes (fastdarts.validate.check_channels_last): refused up front.
    from fastdarts import search
    from fastdarts.config import SearchConfig, TrainConfig
    from fastdarts.train import train

    data = DataConfig(name=folder, batch_size=8, image_size=SIZE, num_workers=0)
    with pytest.raises(ValueError, match="channels_last=true needs a CUDA device"):
        search(SearchConfig(method="pcdarts", epochs=1, C=4, layers=3, data=data, channels_last=True, device="cpu",
                            run_dir=str(tmp_path / "search")))
    with pytest.raises(ValueError, match="channels_last=true needs a CUDA device"):
        train(TrainConfig(genotype=str(tmp_path / "g.json"), data=data, channels_last=True, device="cpu",
                          run_dir=str(tmp_path / "train")))
    assert not (tmp_path / "search").exists() and not (tmp_path / "train").exists()
