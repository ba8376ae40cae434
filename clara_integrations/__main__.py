"""`python -m clara_integrations` runs the `clara` console script."""

from .cli import main

raise SystemExit(main())
