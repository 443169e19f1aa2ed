"""`python -m repro ...` (and `torchrun -m repro train ...`)."""
from .cli import main

raise SystemExit(main())
