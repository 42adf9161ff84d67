"""`python -m bmtpt` is the `bmtpt` command."""

import sys

from .cli import main

sys.exit(main())
