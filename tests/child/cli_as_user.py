"""The command line run by another user: ``cli_as_user.py UID|- ARG ...``.

Imports the command line first (the interpreter and the package may be readable by the starting user
alone), then switches group and user to UID (``-``: keeps the user), then runs
``lazy_disk_cache.cli.main(ARGS)`` and exits with its status.
"""

import os
import sys

from lazy_disk_cache.cli import main


def run_as(user: str, args: list[str]) -> int:
    if user != "-":
        os.setgroups([])
        os.setgid(int(user))
        os.setuid(int(user))
    return main(args)


if __name__ == "__main__":
    raise SystemExit(run_as(sys.argv[1], sys.argv[2:]))
