"""open_tips."""
