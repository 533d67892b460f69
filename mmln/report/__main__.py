"""`python -m mmln.report`: see `mmln.report` (what it writes) and `mmln.report.cli` (its options)."""
from mmln.report.cli import main

raise SystemExit(main())
