"""Settings, the installation's .env, the migration inventory, masking."""
