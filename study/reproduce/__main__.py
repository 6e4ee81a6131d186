import sys

from study.reproduce.cli import main

sys.exit(main())
