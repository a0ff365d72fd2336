"""exit_at_start: writes "boom: cannot start" to stderr and exits with code 3
before ever listening."""

import sys

if __name__ == "__main__":
    print("boom: cannot start", file=sys.stderr, flush=True)
    sys.exit(3)
