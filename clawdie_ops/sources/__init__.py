"""One module per kind of state the installation holds."""
