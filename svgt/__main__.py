import sys

from svgt.cli import main

sys.exit(main())
