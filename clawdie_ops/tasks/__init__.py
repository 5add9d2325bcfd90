"""The task collection: one module per user action."""
from invoke import Collection

from ..config.settings import DEFAULTS
from . import backup
from . import doctor, drill, inspect_archive, restore
from . import zfs as zfs_tasks
from . import migrate, positional

namespace = Collection()
namespace.add_task(backup.backup)
for _task in (zfs_tasks.snapshot, zfs_tasks.snapshots, zfs_tasks.rollback, zfs_tasks.sanoid_config,
              zfs_tasks.replicate):
    namespace.add_task(_task)
for _task in (restore.restore, drill.drill, doctor.doctor, inspect_archive.inspect):
    namespace.add_task(_task)
namespace.add_task(migrate.migrate)
namespace.add_task(migrate.migrate_step)
namespace.configure({"clawdie": DEFAULTS})
positional.register(namespace)  # TASK --help prints this collection's help
