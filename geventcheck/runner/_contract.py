"""What the unpatched parent needs to start the audited child: no gevent import here.

The child module imports gevent (it runs patched); the parent must stay unpatched, so
the few names both sides share live in this module.
"""

# The environment variable that carries the child's settings as JSON.
CONFIG_ENV = "GEVENTCHECK_CHILD"

# What the child runs: patch first, before anything else is imported.
BOOTSTRAP = (
    "import sys; _before = frozenset(sys.modules)\n"
    "from gevent import monkey; monkey.patch_all()\n"
    "from geventcheck.runner._child import main; main(_before)\n"
)
