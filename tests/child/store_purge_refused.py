"""Child: unpickle a store built by another process and try to purge a key; report the outcome.

Usage: store_purge_refused.py PICKLE_FILE KEY
Prints one JSON object: this pid, the exception type and its message.
"""

import json
import os
import pickle
import sys
from pathlib import Path


def main() -> None:
    blob, key = Path(sys.argv[1]).read_bytes(), sys.argv[2]
    store = pickle.loads(blob)
    outcome: dict[str, object] = {"pid": os.getpid(), "type": None, "message": None}
    try:
        store.purge(key)
    except Exception as exc:
        outcome.update(type=type(exc).__name__, message=str(exc))
    sys.stdout.write(json.dumps(outcome) + "\n")


if __name__ == "__main__":
    main()
