"""The test rig: simulated Clawdie hosts on real services (zfs-fuse, PostgreSQL, sshd)."""
