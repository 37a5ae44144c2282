"""open_tips.eval."""
