"""Feature matchers: SuperPoint, SuperGlue, the offline zoo and the Matcher interface they share.

Importing the package registers every matcher of the zoo (``models.matching.register_matcher``).
"""

from . import classical, lightglue, matching  # noqa: F401
