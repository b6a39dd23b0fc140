"""``python -m manifoldtrain``: the command line (:func:`manifoldtrain.cli.main`), also under
``torchrun ... -m manifoldtrain train ...``."""

import sys

from manifoldtrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
