"""open_tips.data."""
