"""The fork server's entry point: ``python -m bndl_like.deploy._forkserve FD`` (see
:mod:`.forkserver`; a module of its own, so that running it does not import it twice)."""

import sys

from .forkserver import serve

if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
