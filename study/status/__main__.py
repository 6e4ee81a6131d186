import sys

from study.status.cli import main

sys.exit(main())
