"""Table of contents: `inv --list` shows the tasks; each lives in clawdie_ops/tasks/."""
from clawdie_ops.tasks import namespace

ns = namespace
