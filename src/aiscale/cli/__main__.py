"""``python -m aiscale.cli``."""

from aiscale.cli import main

main()
