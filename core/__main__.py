"""`python -m gauntlet` is the `gauntlet` command."""
import sys

from gauntlet.cli import main

sys.exit(main())
