"""Images, homographies and pairs: everything the evaluation and training read."""

from . import scenes  # noqa: F401  the pose tier's pairs register with data.pairs.GENERATORS
