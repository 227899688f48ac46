import sys

from moelab.serve.cli import main

sys.exit(main())
