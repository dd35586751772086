"""One module per dataset recipe; importing this package registers them all."""
from . import (  # noqa: F401
    cars196, cifar10, cub200, glyphs, glyphs_cars, glyphs_closed, glyphs_cub, glyphs_imagenet, glyphs_inshop, glyphs_sop,
    inshop, sop,
)
