import sys

from apprentice.cli import main

sys.exit(main())
