"""Helpers with no open_tips dependency, usable from every layer (atomic file writing)."""
