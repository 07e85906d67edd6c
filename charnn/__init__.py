"""charnn: character-level recurrent language models from the command line.

Importing this package is cheap (no torch): the CLI's ``--help`` must start fast.
"""

__version__ = "0.1.0"
