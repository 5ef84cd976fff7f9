import sys

from ictl.cli.main import main

sys.exit(main())
