"""open_tips.formats."""
