import sys

from mcpgw.cli import main

sys.exit(main())
