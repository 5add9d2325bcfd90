"""The task collection: one module per user action."""
from invoke import Collection

from ..config import DEFAULTS
from . import backup

namespace = Collection()
namespace.add_task(backup.backup)
namespace.configure({"clawdie": DEFAULTS})
