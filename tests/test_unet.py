"""segmodel.unet and segmodel.inference: shapes, the parameter count against the closed-form formula, the I/O conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segmodel.inference import foreground_probability, normalize_images
from segmodel.unet import UNet

torch.set_num_threads(1)


def _double_conv(i: int, o: int, m: int | None = None) -> int:
    m = m or o
    # two bias-free 3x3 convs, each followed by a BatchNorm with weight and bias
    return 9 * i * m + 2 * m + 9 * m * o + 2 * o


def expected_params(w: int, c: int = 3, k: int = 2, bilinear: bool = True) -> int:
    f = 2 if bilinear else 1
    n = _double_conv(c, w) + _double_conv(w, 2 * w) + _double_conv(2 * w, 4 * w) + _double_conv(4 * w, 8 * w)
    n += _double_conv(8 * w, 16 * w // f)
    if bilinear:  # Up: upsample (no weights), DoubleConv(in, out, mid=in // 2)
        n += _double_conv(16 * w, 4 * w, 8 * w) + _double_conv(8 * w, 2 * w, 4 * w)
        n += _double_conv(4 * w, w, 2 * w) + _double_conv(2 * w, w, w)
    else:  # Up: ConvTranspose2d(in, in // 2, 2, stride 2) with bias, DoubleConv(in, out)
        for i, o in ((16 * w, 8 * w), (8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)):
            n += 4 * i * (i // 2) + i // 2 + _double_conv(i, o)
    return n + w * k + k  # 1x1 output conv with bias


@pytest.mark.parametrize("width", [4, 8, 16, 64])
@pytest.mark.parametrize("bilinear", [True, False])
def test_parameter_count_matches_formula(width, bilinear):
    model = UNet(width=width, bilinear=bilinear)
    assert sum(p.numel() for p in model.parameters()) == expected_params(width, bilinear=bilinear)


def test_paper_size_is_the_known_milesial_count():
    # milesial/Pytorch-UNet, bilinear, 3 -> 2 classes: 17,263,042 parameters
    assert sum(p.numel() for p in UNet().parameters()) == 17_263_042


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 48, 64), (1, 3, 37, 53)])
def test_output_shape_follows_input(shape):
    model = UNet(width=4).eval()
    with torch.no_grad():
        out = model(torch.zeros(shape))
    assert out.shape == (shape[0], 2, shape[2], shape[3])


def test_layout_widths():
    m = UNet(width=8)
    assert m.inc.double_conv[3].out_channels == 8
    assert [d.maxpool_conv[1].double_conv[3].out_channels for d in (m.down1, m.down2, m.down3, m.down4)] == [16, 32, 64, 64]
    assert isinstance(m.down1.maxpool_conv[0], torch.nn.MaxPool2d)
    assert m.up1.up.mode == "bilinear"
    assert m.arch() == {"arch": "unet", "width": 8, "in_channels": 3, "n_classes": 2, "bilinear": True}


def test_foreground_probability_is_softmax_channel_one_by_default():
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, -1.0]]]])  # [1, 2, 1, 2]
    p = foreground_probability(logits)
    expected = np.array([[[0.5, np.exp(-1.0) / (np.exp(2.0) + np.exp(-1.0))]]])
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)


def test_normalize_images_maps_uint8_to_minus_one_one_nchw():
    img = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # [1, 1, 1, 3] NHWC
    x = normalize_images(img)
    assert x.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(x.flatten().numpy(), [-1.0, 1.0, 51 / 127.5 - 1], rtol=0, atol=1e-7)
    big = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    assert normalize_images(big).is_contiguous(memory_format=torch.channels_last)


def test_bad_sizes_refused():
    with pytest.raises(ValueError, match="width=0"):
        UNet(width=0)
