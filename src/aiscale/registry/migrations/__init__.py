"""Alembic environment of the registry (a package only so that its files ship in the wheel)."""
