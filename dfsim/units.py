"""Units live in `dfnet.core.units` (the live runtime parses the same spellings); re-exported here."""
from dfnet.core.units import *  # noqa: F401,F403
from dfnet.core.units import RATE_UNITS, SIZE_UNITS, format_bytes, format_rate, parse_rate, parse_size  # noqa: F401
