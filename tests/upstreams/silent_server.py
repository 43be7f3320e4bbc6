"""An upstream that starts and then never answers anything (a hung server)."""

import sys

for _line in sys.stdin:
    pass
