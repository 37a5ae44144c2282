"""open_tips.captions."""
