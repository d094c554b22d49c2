"""The Script menu's built-in scripts (A1111's scripts/*.py); menu.py lists them."""
