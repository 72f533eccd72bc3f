import sys

from maskops.cli import main

sys.exit(main())
