import sys

from study.submit.cli import main

sys.exit(main())
