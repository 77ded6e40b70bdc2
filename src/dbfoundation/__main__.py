"""`python -m dbfoundation` is the `dbf` command."""

from dbfoundation.cli import main

main()
