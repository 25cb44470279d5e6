"""voting_det: interpretable multi-scale primitive voting for structure
localization in medical images (Liu, Wan and He, MICCAI 2019), as a
detectron2 extension.

Importing the package registers its data sets in detectron2's catalogs; it
never changes detectron2's global config defaults (use ``add_voting_config``).
"""
# set before the imports: submodules record it
__version__ = "0.1.0"

from . import data  # noqa: F401  (registers the NT data sets)
from . import modeling  # noqa: F401  (registers the meta-architecture and heads)
from .config import add_voting_config

__all__ = ["add_voting_config", "data", "modeling"]
