"""Image decoding, preprocessing and rendering: pure numpy + Pillow (no torch, no HTTP).

* :mod:`.decode`: untrusted bytes / base64 -> upright 8-bit Pillow image (limits enforced).
* :mod:`.preprocess`: images -> model input tensor per the card, and the :class:`Geometry`
  that maps input-size maps back onto the original image.
* :mod:`.colormaps`: 256-entry lookup tables (jet, viridis, inferno, magma, plasma, turbo, gray).
* :mod:`.render`: normalise, resize, colour, overlay, encode and measure maps.
* :mod:`.tiles`: activation-map and convolution-kernel mosaics.
"""

from service.imaging.colormaps import COLORMAPS, apply_colormap
from service.imaging.decode import decode_base64_image, decode_image, to_mode
from service.imaging.preprocess import (
    Geometry,
    box_to_input,
    plan_geometry,
    preprocess,
    preprocess_with_geometry,
    scale_box,
    to_original,
)
from service.imaging.render import (
    encode_array,
    encode_png,
    map_stats,
    normalize,
    overlay,
    prepare_map,
    reduce_gradient,
    resize_map,
    to_base64,
)
from service.imaging.tiles import filter_mosaic, tile_grid

__all__ = [
    "COLORMAPS",
    "Geometry",
    "apply_colormap",
    "box_to_input",
    "decode_base64_image",
    "decode_image",
    "encode_array",
    "encode_png",
    "filter_mosaic",
    "map_stats",
    "normalize",
    "overlay",
    "plan_geometry",
    "prepare_map",
    "preprocess",
    "preprocess_with_geometry",
    "reduce_gradient",
    "resize_map",
    "scale_box",
    "tile_grid",
    "to_base64",
    "to_mode",
    "to_original",
]
