"""open_tips.losses."""
