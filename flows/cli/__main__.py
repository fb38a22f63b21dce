"""`python -m flows.cli`: the same as `aeflow`."""

from flows.cli import main

main()
