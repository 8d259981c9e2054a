"""Alembic revisions of the registry schema (a package only so that they ship in the wheel)."""
