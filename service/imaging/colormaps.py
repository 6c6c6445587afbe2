"""Colormaps as 256x3 uint8 lookup tables, built at import from published control points.

No plotting library at runtime. Two kinds of definition:

* ``jet`` is the classic MATLAB/OpenCV jet, piecewise linear through anchors at 0, 1/8, 3/8,
  5/8, 7/8 and 1 (blue 0.5 -> 1 -> 0, green 0 -> 1 -> 0, red 0 -> 1 -> 0.5). We follow
  OpenCV's ``COLORMAP_JET`` rather than matplotlib's (whose breakpoints are 0.11/0.34/0.65...)
  because pytorch-grad-cam renders with OpenCV; our table is within 1 level of
  ``cv2.applyColorMap``. ``jet[0] == (0, 0, 128)``, ``jet[255] == (128, 0, 0)``.
* ``viridis``, ``inferno``, ``magma``, ``plasma`` (van der Walt & Smith, CC0) and ``turbo``
  (Mikhailov 2019, Apache-2.0): every 5th entry of the published 256-entry tables
  (indices 0, 5, ..., 255), stored as RGB hex and linearly interpolated with ``np.interp``;
  within 2 levels of the published tables.
* ``coolwarm`` (Moreland 2009, "Diverging Color Maps for Scientific Visualization"): the
  diverging map for signed attributions (blue = against, light grey = 0, red = for), stored
  the same way from the published 256-entry table.
* ``gray``: identity ramp, ``gray[i] == (i, i, i)``.
"""

from __future__ import annotations

import numpy as np

from service.errors import ProblemError

__all__ = ["COLORMAPS", "apply_colormap", "colormap_index", "colormap_table"]

_JET_ANCHORS = {
    "r": ((0.0, 3 / 8, 5 / 8, 7 / 8, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    "g": ((0.0, 1 / 8, 3 / 8, 5 / 8, 7 / 8, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    "b": ((0.0, 1 / 8, 3 / 8, 5 / 8, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
}

# RGB hex of entries 0, 5, 10, ..., 255 of the published tables (52 anchors each).
_ANCHOR_STEP = 5
_ANCHORS_HEX = {
    "viridis": (
        "44015446085c471063481769481d6f482475472a7a46307e453781433d844142873f48893d4e8a3a538b"
        "38598c355e8d33638d31688e2e6d8e2c718e2a768e297b8e27808e25848e23898e218e8d20928c1f978b"
        "1e9c891fa18821a58524aa8328ae802eb37c35b7793dbc7446c06f50c46a5ac86465cb5e70cf577cd250"
        "89d54895d840a2da37b0dd2fbddf26cae11fd8e219e5e419f1e51dfde725"
    ),
    "inferno": (
        "00000402020c0504170a072210092d160b391e0c45260c512f0a5b380962400a67490b6a510e6c59106e"
        "61136e69166e71196e781c6d801f6c88226a902568982766a02a63a82e5fb0315bb73557bf3952c63d4d"
        "cc4248d34743d94d3ddf5337e45a31e9612bed6925f1711ff47918f78212f98b0bfa9407fb9d07fca60c"
        "fcb014fbba1ffac42af8cd37f6d746f4e156f2ea69f2f27df5f992fcffa4"
    ),
    "magma": (
        "00000402020b0504160907200e0b2b140e361a104221114e29115a311165390f6e420f754a107952137c"
        "5a167e6219806a1c81721f81792282812581892881912b81992d80a1307eaa337db2357bba3878c23b75"
        "ca3e72d2426fd9466be04c67e75263ec5860f1605df4695cf7725cf97b5dfb8560fc8e64fd9869fea16e"
        "feaa74feb47bfebd82fec68afecf92fed89afde2a3fdebacfcf4b6fcfdbf"
    ),
    "plasma": (
        "0d08871b068d2605912f059638049a41049d4903a05102a35901a56100a76900a87100a87801a88004a8"
        "8707a68e0ca49511a19c179ea21d9aa82296ae2892b42e8dba3388bf3984c43e7fc9447acd4a76d24f71"
        "d6556dda5b69de6164e26660e66c5ce97257ed7953f07f4ff3854bf58c46f79342f99a3efba139fca835"
        "fdaf31feb72dfebe2afdc627fcce25fbd724f8df25f6e826f3f027f0f921"
    ),
    "turbo": (
        "30123b36215f3b2f803f3e9c424bb54559cb4666dd4773eb4680f6458cfd4099ff38a5fb2fb2f427bee9"
        "1fc9dd1ad4d018ddc21ae4b622ebaa2ff19b3ff68a52fa7a65fd6979fe598bff4b9cfe40a9fb39b7f735"
        "c3f134d0ea34dbe236e5d938eecf3af5c53afaba39fdae35fea130fe932afc8423f9751df46617ef5811"
        "e84b0ce14109d83706ce2d04c32503b71d02a916019b0f018b09027a0403"
    ),
    "coolwarm": (
        "3b4cc04055c8465ecf4c66d6536edd5977e35f7fe86687ed6c8ff17396f57a9df881a4fb88abfd8fb1fe"
        "96b7ff9dbdffa3c2feaac7fdb1cbfcb7cff9bed2f6c4d5f3cad8efcfdaead5dbe5dadce0dfdbd9e4d9d2"
        "e9d5cbedd2c3f0cdbbf2c9b4f5c4acf6bea4f7b89cf7b194f7aa8cf6a385f59c7df39475f08b6eed8366"
        "e97a5fe57058e16751dc5d4ad65244d0473dca3b37c32e31bb1b2cb40426"
    ),
}


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _jet() -> np.ndarray:
    x = np.arange(256) / 255.0
    channels = [np.interp(x, *_JET_ANCHORS[c]) for c in "rgb"]
    return _to_uint8(np.stack(channels, axis=1))


def _from_anchors(hex_rows: str) -> np.ndarray:
    anchors = np.frombuffer(bytes.fromhex(hex_rows), dtype=np.uint8).reshape(-1, 3)
    positions = np.arange(len(anchors)) * _ANCHOR_STEP
    assert positions[-1] == 255, "anchor table must end at index 255"
    index = np.arange(256)
    channels = [np.interp(index, positions, anchors[:, c].astype(np.float64)) for c in range(3)]
    return np.floor(np.stack(channels, axis=1) + 0.5).astype(np.uint8)


def _gray() -> np.ndarray:
    return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)


COLORMAPS: dict[str, np.ndarray] = {
    "jet": _jet(),
    "gray": _gray(),
    **{name: _from_anchors(rows) for name, rows in _ANCHORS_HEX.items()},
}
for _table in COLORMAPS.values():
    _table.setflags(write=False)


def colormap_table(name: str) -> np.ndarray:
    """The read-only 256x3 uint8 table of ``name``; ProblemError (422) naming the choices."""
    try:
        return COLORMAPS[name]
    except KeyError:
        raise ProblemError(
            f"unknown colormap {name!r}; choose one of {', '.join(sorted(COLORMAPS))}"
        ) from None


# Pixels per block of the blockwise loops here and in render: a block's float64 temporaries
# (512 KiB) stay in cache, and a 12-megapixel map never needs more than a few of them.
BLOCK_PIXELS = 1 << 16


def row_blocks(height: int, width: int, block: int = BLOCK_PIXELS) -> list[slice]:
    """Row slices of about ``block`` pixels each (at least one row) covering ``height`` rows."""
    step = max(1, block // max(1, width))
    return [slice(r, min(height, r + step)) for r in range(0, height, step)]


def apply_colormap(map01: np.ndarray, name: str = "jet") -> np.ndarray:
    """Colour a map with values in [0, 1] (HxW) -> HxWx3 uint8 RGB.

    Values are clipped to [0, 1] and quantised by rounding (``floor(255 x + 0.5)``); NaN
    takes the colour of 0.
    """
    table = colormap_table(name)
    return np.take(table, colormap_index(map01), axis=0, mode="clip")


def colormap_index(map01: np.ndarray) -> np.ndarray:
    """The table row of each pixel (HxW uint8): what :func:`apply_colormap` looks up.

    ``floor(255 clip(x, 0, 1) + 0.5)`` computed in float64 (exact for float32 input), block
    by block so that temporaries stay small; ``fmax``/``fmin`` send NaN to 0 and +-inf to the
    ends, as ``nan_to_num`` then ``clip`` would.
    """
    m = np.asarray(map01)
    if m.ndim != 2:
        raise ValueError(f"apply_colormap expects an HxW map, got shape {m.shape}")
    out = np.empty(m.shape, dtype=np.uint8)
    for rows in row_blocks(*m.shape):
        x = m[rows].astype(np.float64)  # always a fresh block we may overwrite
        np.fmax(x, 0.0, out=x)
        np.fmin(x, 1.0, out=x)
        x *= 255.0
        x += 0.5
        out[rows] = x  # truncation is floor here: x >= 0.5
    return out
