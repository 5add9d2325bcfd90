"""clawdie-ops: back up, restore, verify and migrate a Clawdie installation."""
__version__ = "0.1.0"
