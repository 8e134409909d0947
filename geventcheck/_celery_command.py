"""`celery -A proj geventcheck audit|doctor|gate ...`: the same commands, where users already are.

Registered through Celery's ``celery.commands`` entry point. The app comes from
Celery's own ``-A``; everything else is passed to the geventcheck command.
"""

from __future__ import annotations

import click

from ._cli import main
from .canary import install_env_hook as install_canary_env_hook
from .patches._bootstrap import install_env_hook

# The celery command loads this plugin before it loads the app: GEVENTCHECK_BOOTSTRAP=1
# bootstraps the app's shims from here (geventcheck.patches.bootstrap), and
# GEVENTCHECK_CANARY=1 adds the canary to the worker (geventcheck.canary).
install_env_hook()
install_canary_env_hook()


@click.command(
    "geventcheck",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                      "help_option_names": []},
    help="Is each task safe on a gevent worker? (geventcheck audit|doctor|gate ...)",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def geventcheck(ctx: click.Context, args: tuple[str, ...]) -> None:
    app = ctx.find_root().params.get("app")
    argv = list(args)
    given = set(argv)
    # the gate reading a saved --report runs no audit, so it takes no app
    wants_app = argv and (argv[0] in ("audit", "doctor")
                          or (argv[0] == "gate" and "--report" not in given))
    if app and wants_app and not {"-A", "--app"} & given:
        argv[1:1] = ["-A", str(app)]
    main(argv)
