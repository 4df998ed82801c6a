"""trainer.validate: the trainer's numbers come from scoring's metrics under a named protocol
(no copy of the metrics of its own): a hand computation on fixed logits, and agreement with
eval-seg on a real-benchmark folder."""
from __future__ import annotations

import contextlib

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import trainer.validate as V  # noqa: E402
from segmodel.inference import probability_to_uint8  # noqa: E402
from trainer.validate import grid_image, labelled_val_grid, validate, validate_real  # noqa: E402

T, F = True, False


class _FixedLogits(torch.nn.Module):
    """Returns the logits it was built with (the images are ignored)."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.register_buffer("logits", torch.from_numpy(logits.astype(np.float32)))

    def forward(self, x):
        return self.logits[: x.shape[0]]


def _no_autocast():
    return contextlib.nullcontext()


def test_validate_on_fixed_logits_equals_a_hand_computation():
    # probabilities v / 255 for two 2 x 2 images, ground truth [[F, F], [T, T]] for both
    v = np.array([[[26, 102], [204, 242]], [[153, 76], [51, 178]]])
    p = v / 255.0
    logits = np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=1)  # softmax channel 1 = p
    mask = np.array([[[0, 0], [1, 1]]] * 2, np.uint8)
    val = {"image": np.zeros((2, 2, 2, 3), np.uint8), "mask": mask}
    out, prob = validate(_FixedLogits(logits), val, torch.device("cpu"), _no_autocast)
    np.testing.assert_array_equal(probability_to_uint8(prob), v)
    # maxF: image 1 has P = R = 1 for 102 <= k < 204; image 2 reaches F = 1.3 * 0.5 / 0.8 = 0.8125
    # (only 178 > k: P 1, R 1/2) for 153 <= k < 178, where image 1 is 1: mean (1 + 0.8125) / 2
    assert out["max_f"] == pytest.approx((1 + 0.8125) / 2, abs=1e-12)
    # v >= 128: image 1 {204, 242} = gt (IoU 1, acc 1); image 2 {153, 178}: tp 1, fp 1, fn 1
    assert out["iou"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-12)
    assert out["accuracy"] == pytest.approx((1 + 0.5) / 2, abs=1e-12)
    # cross-entropy: mean over pixels of -log p(true class)
    assert out["loss"] == pytest.approx(float(np.mean(-np.log(np.where(mask == 1, p, 1 - p)))), abs=1e-6)
    assert out["protocol"] == "paper" and out["n"] == 2


def test_validate_under_the_toolkit_protocol_normalises_each_map():
    # a dim map {60, 100, 110, 120}, gt [[F, F], [T, T]]. Paper: nothing reaches v >= 128, so
    # IoU 0 and accuracy 1/2. Toolkit: min-max normalised, (v - 60) / 60 -> levels uint8(255 p) =
    # {0, 170, 212, 255}; v >= 128 marks 100, 110, 120: tp 2, fp 1 -> IoU 2/3, accuracy 3/4.
    # Both reach maxF 1 (paper at 100 <= k < 110, toolkit at 171 <= m <= 212).
    v = np.array([[[100, 60], [110, 120]]])
    p = v / 255.0
    logits = np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=1)
    val = {"image": np.zeros((1, 2, 2, 3), np.uint8), "mask": np.array([[[0, 0], [1, 1]]], np.uint8)}
    paper, _ = validate(_FixedLogits(logits), val, torch.device("cpu"), _no_autocast)
    toolkit, _ = validate(_FixedLogits(logits), val, torch.device("cpu"), _no_autocast, protocol="sod-toolkit")
    assert (paper["protocol"], toolkit["protocol"]) == ("paper", "sod-toolkit")
    assert (paper["iou"], paper["accuracy"], paper["max_f"]) == (0.0, 0.5, 1.0)
    assert toolkit["iou"] == pytest.approx(2 / 3, abs=1e-15) and toolkit["accuracy"] == 0.75
    assert toolkit["max_f"] == 1.0


def test_no_second_copy_of_the_metrics():
    for name in ("f_curve", "iou_at_half", "LocalMetrics", "Scorer", "_pick", "_evaluator_metrics"):
        assert not hasattr(V, name), name


@pytest.mark.parametrize("max_pixels, scored", [(64_000_000, 3), (2450, 2)])
def test_validate_real_equals_eval_seg_on_a_folder(tmp_path, max_pixels, scored):
    """The trainer's benchmark validation and eval-seg give the same paper numbers for one model,
    and skip the same images over the pixel limit (the 50 x 50 one: 2500 > 2450)."""
    unet = pytest.importorskip("segmodel.unet")
    checkpoint = pytest.importorskip("trainer.checkpoint")
    from evaluator.evaluation import EvalConfig, evaluate

    torch.manual_seed(0)
    model = unet.UNet(width=4).eval()
    checkpoint.save_run_state(tmp_path / "run", 3, model, {"shardset": {"name": "t", "fingerprint": "0" * 64}})
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for i, (h, w) in enumerate([(40, 60), (60, 40), (50, 50)]):
        cv2.imwrite(str(tmp_path / "data" / "images" / f"im{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        m = np.zeros((h, w), np.uint8)
        m[h // 4: 3 * h // 4, w // 5: w // 2] = 255
        cv2.imwrite(str(tmp_path / "data" / "masks" / f"im{i}.png"), m)
    spec = f"folder:{tmp_path / 'data'}"
    ours = validate_real(model, spec, None, torch.device("cpu"), _no_autocast, max_pixels=max_pixels)
    ref = evaluate(EvalConfig(datasets=(spec,), ckpts=(tmp_path / "run",), device="cpu", batch_size=1,
                              max_image_pixels=max_pixels))
    assert ours["n"] == ref["datasets"]["data"]["n_images"] == scored
    assert ours["skipped"] == len(ref["datasets"]["data"]["skipped"]) == 3 - scored
    summary = ref["datasets"]["data"]["protocols"]["paper"]["summary"]
    for k in ("max_f", "iou", "accuracy"):
        assert ours[k] == pytest.approx(summary[k]["mean"], abs=1e-9), k
    toolkit = validate_real(model, spec, None, torch.device("cpu"), _no_autocast, protocol="sod-toolkit",
                            max_pixels=max_pixels)
    assert toolkit["max_f"] == pytest.approx(
        ref["datasets"]["data"]["protocols"]["sod-toolkit"]["summary"]["max_f"]["mean"], abs=1e-9)


def test_probability_to_uint8_rounds_half_to_even_and_clips():
    np.testing.assert_array_equal(probability_to_uint8(np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.5 / 255])),
                                  [0, 128, 255, 255, 0, 0])
    np.testing.assert_array_equal(probability_to_uint8(np.array([1.5 / 255, 2.5 / 255], np.float64)), [2, 2])


def test_probability_to_uint8_takes_the_product_in_the_maps_precision():
    """float32 maps (the model's) are quantised in float32, float64 maps in float64: each path of
    the tools keeps the 8-bit values it always had."""
    p = np.array([1058806812], np.uint32).view(np.float32)  # 0.60980391...: 255 p = 155.4999983 exactly
    assert probability_to_uint8(p)[0] == 156  # float32's product rounds to 155.5, then half to even
    assert probability_to_uint8(p.astype(np.float64))[0] == 155
    p = np.random.default_rng(0).random(100_000).astype(np.float32)
    np.testing.assert_array_equal(probability_to_uint8(p), np.rint(p * np.float32(255)).astype(np.uint8))
    np.testing.assert_array_equal(probability_to_uint8(p.astype(np.float64)),
                                  np.rint(p.astype(np.float64) * 255).astype(np.uint8))


def test_grid_image_layout():
    val = {"image": np.full((2, 4, 4, 3), 7, np.uint8), "mask": np.ones((2, 4, 4), np.uint8)}
    g = grid_image(val, np.zeros((2, 4, 4)), n=2)
    assert g.shape == (3, 8, 12)
    assert (g[:, :, :4] == 7).all() and (g[:, :, 4:8] == 255).all() and (g[:, :, 8:] == 0).all()


def test_val_grid_picture_names_its_columns_and_step():
    """val-grid.png reads without the docs: the step in a title band, image | mask | prediction
    above the columns, tiles enlarged (64 px to 128) so the text is legible beside them."""
    import cv2

    val = {"image": np.full((4, 64, 64, 3), 7, np.uint8), "mask": np.ones((4, 64, 64), np.uint8)}
    pic = labelled_val_grid(val, np.zeros((4, 64, 64)), step=300)
    assert pic.shape == (24 + 24 + 4 * 130 + 2, 3 * 130 + 2, 3)
    title, columns = pic[:24], pic[24:48]
    assert (title < 128).any() and (columns < 128).any()
    # each column's name sits over its own column (text pixels in every third of the band)
    assert all((columns[:, 2 + c * 130:2 + c * 130 + 128] < 128).any() for c in range(3))
    # the tiles are the grid's, enlarged by nearest neighbour
    assert (pic[50:50 + 128, 2:130] == 7).all() and (pic[50:50 + 128, 132:260] == 255).all()
    # a different step draws a different title
    other = labelled_val_grid(val, np.zeros((4, 64, 64)), step=4000)
    assert not np.array_equal(other[:24], title) and np.array_equal(other[24:], pic[24:])
    assert cv2.imencode(".png", pic)[0]
