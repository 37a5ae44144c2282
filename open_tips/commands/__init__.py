"""open_tips.commands."""
