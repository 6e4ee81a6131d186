import sys

from study.evaluate.cli import main

sys.exit(main())
