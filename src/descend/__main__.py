"""``python -m descend`` runs the command-line interface."""

from descend.cli import main

if __name__ == "__main__":
    main()
