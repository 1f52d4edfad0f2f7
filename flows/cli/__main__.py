"""`python -m flows.cli …` runs the `autotraj` command."""

from flows.cli import main

main()
