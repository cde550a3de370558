"""``python -m lightning_cl fit ...``: the same command line as ``lightning-cl``."""

from lightning_cl.cli import main

if __name__ == "__main__":
    main()
