import sys

from sparsefit.cli import main

sys.exit(main())
