import sys

from lightning_align.cli import main

sys.exit(main())
