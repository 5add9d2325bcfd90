"""The `clawdie-ops` console script: the same task collection as `inv` in a checkout."""
from invoke import Program

from . import __version__
from .tasks import namespace

program = Program(namespace=namespace, version=__version__, name="clawdie-ops",
                  binary="clawdie-ops")
