"""One module per ``tether`` subcommand; ``tether/cli.py`` finds them all.

Each module defines ``register(commands)``, which adds its parser to the argparse
subparsers object and sets ``handler=<function(args)>`` as a default.
"""
