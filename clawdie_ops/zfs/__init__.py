"""ZFS: commands, datasets, sanoid, syncoid, replication, rollback."""
