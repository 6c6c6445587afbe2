import numpy as np
import pytest
from PIL import Image

from schemas.card import InputSpec
from service.imaging.preprocess import (
    Geometry,
    box_to_input,
    plan_geometry,
    preprocess,
    preprocess_with_geometry,
    scale_box,
    to_original,
)

torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth structure plus noise, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) % 64 * 4], axis=-1)
    noisy = base + rng.normal(0, 20, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def torchvision_reference(images: list[Image.Image], spec: InputSpec) -> np.ndarray:
    steps = []
    if spec.color == "L":
        steps.append(transforms.Lambda(lambda im: im.convert("L")))
    if spec.resize == "stretch":
        steps.append(transforms.Resize((spec.height, spec.width), antialias=True))
    else:
        shorter = spec.resize_shorter or max(spec.height, spec.width)
        steps.append(transforms.Resize(shorter, antialias=True))
        steps.append(transforms.CenterCrop((spec.height, spec.width)))
    steps.append(transforms.ToTensor())  # /255, CHW
    if spec.color == "BGR":
        steps.append(transforms.Lambda(lambda t: t.flip(0)))
    scale = spec.scale * 255.0
    if scale != 1.0:
        steps.append(transforms.Lambda(lambda t: t * scale))
    steps.append(transforms.Normalize(spec.mean, spec.std))
    pipeline = transforms.Compose(steps)
    batch = torch.stack([pipeline(im) for im in images]).numpy()
    return batch.transpose(0, 2, 3, 1) if spec.layout == "NHWC" else batch


CARDS = {
    "stretch": InputSpec(height=32, width=48),
    "center_crop_resnet": InputSpec(height=24, width=24, resize="center_crop", resize_shorter=28),
    "center_crop_null_shorter": InputSpec(height=21, width=21, resize="center_crop"),
    "nhwc_bgr": InputSpec(
        layout="NHWC",
        height=17,
        width=23,
        color="BGR",
        mean=[0.406, 0.456, 0.485],
        std=[0.225, 0.224, 0.229],
    ),
    "gray": InputSpec(height=19, width=19, color="L", mean=[0.5], std=[0.25]),
    "odd_crop_not_square": InputSpec(
        height=15, width=25, resize="center_crop", resize_shorter=27, mean=[0.5], std=[0.5]
    ),
    "crop_larger_than_resized": InputSpec(
        height=10, width=40, resize="center_crop", resize_shorter=11
    ),
    "raw_pixels": InputSpec(height=9, width=13, scale=1.0, mean=[0.0], std=[1.0]),
}
IMAGES = [photo(61, 45, 1), photo(40, 71, 2), photo(33, 33, 3), photo(64, 30, 4)]


@pytest.mark.parametrize("name", sorted(CARDS))
def test_matches_torchvision(name):
    spec = CARDS[name]
    ours = preprocess(IMAGES, spec)
    ref = torchvision_reference(IMAGES, spec)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    tol = 1e-6 * max(1.0, float(np.abs(ref).max()))  # raw 0..255 pixels: relative
    np.testing.assert_allclose(ours, ref, rtol=0, atol=tol)


def test_layouts():
    nchw = preprocess([IMAGES[0]], InputSpec(height=8, width=10))
    nhwc = preprocess([IMAGES[0]], InputSpec(height=8, width=10, layout="NHWC"))
    assert nchw.shape == (1, 3, 8, 10)
    assert nhwc.shape == (1, 8, 10, 3)
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), nhwc)


def test_geometry_center_crop_offsets_round_like_torchvision():
    spec = InputSpec(height=4, width=4, resize="center_crop", resize_shorter=5)
    g = plan_geometry((5, 10), spec)  # (h, w): shorter 5 stays, 10 - 4 = 6 -> left 3
    assert g.resized_size == (5, 10)
    assert g.crop_box == (3, round(0.5), 7, 4)  # round(0.5) == 0 (half to even)
    assert g.input_size == (4, 4)
    g = plan_geometry((100, 60), spec)  # w shorter: 60 -> 5, 100 -> int(5 * 100 / 60) = 8
    assert g.resized_size == (8, 5)
    assert g.crop_box == (0, 2, 4, 6)


def test_to_original_stretch_is_a_plain_resize():
    g = plan_geometry((40, 60), InputSpec(height=20, width=30))
    ramp = np.tile(np.arange(30, dtype=np.float32), (20, 1))
    back = to_original(ramp, g)
    assert back.shape == (40, 60)
    # Original column j has its centre at input column (j + 0.5) / 2 - 0.5.
    expected = np.clip((np.arange(60) + 0.5) / 2 - 0.5, 0, 29)
    np.testing.assert_allclose(back[7], expected, atol=1e-5)


def test_to_original_center_crop_fills_cut_areas():
    # 100x60 image -> shorter 60 -> 50: resized 50x83 (h x w), 50x50 crop from x = 16.
    spec = InputSpec(height=50, width=50, resize="center_crop", resize_shorter=50)
    g = plan_geometry((60, 100), spec)
    assert g.resized_size == (50, 83) and g.crop_box == (16, 0, 66, 50)
    back = to_original(np.ones((50, 50), np.float32), g)
    assert back.shape == (60, 100)
    columns = back.mean(axis=0)
    # Crop spans resized x in [16, 66) = original x in [19.2, 79.2).
    assert columns[:19].max() == 0.0 and columns[20:79].min() == 1.0 and columns[80:].max() == 0
    nan = to_original(np.ones((50, 50), np.float32), g, fill=np.nan)
    assert np.isnan(nan[:, :19]).all() and not np.isnan(nan[:, 20:79]).any()


def test_to_original_rejects_wrong_size():
    g = plan_geometry((10, 10), InputSpec(height=4, width=4))
    with pytest.raises(ValueError, match="input size"):
        to_original(np.zeros((5, 5)), g)


def test_box_to_input_and_back_agree():
    spec = InputSpec(height=50, width=50, resize="center_crop", resize_shorter=50)
    _, (g,) = preprocess_with_geometry([photo(100, 60)], spec)
    assert g == Geometry((60, 100), (50, 83), (16, 0, 66, 50))
    x0, y0, x1, y1 = box_to_input([40, 12, 70, 48], g)
    assert (y0, y1) == pytest.approx((10.0, 40.0))
    assert (x0, x1) == pytest.approx((40 * 0.83 - 16, 70 * 0.83 - 16))
    assert box_to_input([0, 0, 10, 10], g)[0::2] == (0.0, 0.0)  # cut away entirely


def test_preprocess_accepts_any_mode():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    out = preprocess([rgba], InputSpec(height=4, width=4, scale=1.0, mean=[0.0], std=[1.0]))
    assert np.all(out == 255.0)  # transparent -> white background


def test_scale_box_to_feature_grid():
    assert scale_box([32, 0, 224, 112], (224, 224), (7, 7)) == (1.0, 0.0, 7.0, 3.5)
