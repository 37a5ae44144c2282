"""open_tips.models."""
