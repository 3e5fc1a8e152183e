"""`python -m annotation …`: see annotation/cli.py."""

from annotation.cli import main

if __name__ == "__main__":
    main()
