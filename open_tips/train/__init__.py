"""open_tips.train."""
