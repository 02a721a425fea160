import sys

from ravl.cli import main

sys.exit(main())
