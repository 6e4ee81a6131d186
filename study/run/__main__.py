import os
import sys

from study.run.cli import main

code = main()
# Everything is written by now (the runs, the lock released, Ray shut down): the interpreter's own teardown of
# Ray's and torch's native libraries would take another second and a half
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
