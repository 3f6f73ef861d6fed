"""`python -m autolabel`: the same front door as the `autolabel` command."""

from autolabel.cli import main

main()
