"""One module per dataset recipe; importing this package registers them all."""
from . import cars196, cifar10, cub200, glyphs, glyphs_closed, inshop, sop  # noqa: F401
