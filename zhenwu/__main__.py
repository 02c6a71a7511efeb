"""`python -m zhenwu ...` is the `zhenwu` command."""

import sys

from zhenwu.compiler.cli import main

sys.exit(main())
