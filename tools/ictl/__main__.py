import sys

from ictl.cli import main

sys.exit(main())
