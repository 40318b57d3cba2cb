"""`python -m steering prepare`: convert the packaged default model once (used by `make serve`)."""

import sys

from steering.model import default_model_folder

if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        sys.exit("usage: python -m steering prepare")
    print(default_model_folder())
