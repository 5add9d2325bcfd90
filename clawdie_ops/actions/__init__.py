"""One module (or package) per user action."""
