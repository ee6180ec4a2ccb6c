import sys

from so3krates.cli import main

sys.exit(main())
