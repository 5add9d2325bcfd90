"""The backup archive: writer, manifest, verification, contents."""
