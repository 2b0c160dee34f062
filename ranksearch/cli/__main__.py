"""``python -m ranksearch.cli``: the command line."""

from ranksearch.cli import main_entry

main_entry()
