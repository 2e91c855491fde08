"""``python -m evitsam``: the same command as the ``evitsam`` console script."""

from .cli import main

main()
