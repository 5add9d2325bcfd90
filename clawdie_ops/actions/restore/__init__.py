"""`restore`: put an archive back onto an installation."""
