import sys

from cryptfs.cli.commands import main

sys.exit(main())
