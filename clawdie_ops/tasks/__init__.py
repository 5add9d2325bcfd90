"""The task collection: one module per user action."""
from invoke import Collection

from ..config.settings import DEFAULTS
from ..lifeline import LocalRunner
from . import backup
from . import doctor, drill, inspect_archive, keys, restore
from . import zfs as zfs_tasks
from . import migrate, migrate_delta, positional
from . import copy, fleet, prune, schedule

namespace = Collection()
namespace.add_task(backup.backup)
for _task in (zfs_tasks.snapshot, zfs_tasks.snapshots, zfs_tasks.rollback, zfs_tasks.sanoid_config,
              zfs_tasks.replicate):
    namespace.add_task(_task)
for _task in (restore.restore, drill.drill, doctor.doctor, inspect_archive.inspect, keys.keys):
    namespace.add_task(_task)
namespace.add_task(migrate.migrate)
namespace.add_task(migrate.migrate_step)
namespace.add_task(migrate_delta.migrate_delta)
for _task in (copy.copy, prune.prune, schedule.schedule, fleet.fleet):
    namespace.add_task(_task)
# run.shell too (the runner passes clawdie.shell on each call): invoke's own default is
# /bin/bash, which FreeBSD's base system does not have. Local commands die with the tool
# (a killed run leaves no psql replaying on its own).
namespace.configure({"clawdie": DEFAULTS, "run": {"shell": DEFAULTS["shell"]},
                     "runners": {"local": LocalRunner}})
positional.register(namespace)  # TASK --help prints this collection's help
