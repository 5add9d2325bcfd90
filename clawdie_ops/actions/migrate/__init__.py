"""`migrate`: move an installation to new hardware."""
