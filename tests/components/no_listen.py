"""no_listen: stays alive but never opens a socket (sleeps until killed)."""

import sys
import time

if __name__ == "__main__":
    print("no_listen: sleeping without listening", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)
