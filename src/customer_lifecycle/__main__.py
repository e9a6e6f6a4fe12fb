"""`python -m customer_lifecycle` runs the command line."""

from customer_lifecycle.cli import app

app()
