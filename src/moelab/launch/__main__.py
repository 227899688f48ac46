import sys

from moelab.launch.cli import main

sys.exit(main())
