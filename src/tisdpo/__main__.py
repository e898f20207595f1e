import sys

from tisdpo.cli import main

sys.exit(main())
