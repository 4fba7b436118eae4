"""``python -m robustkit ...``: the same command line as the ``robustkit`` script (and what torchrun runs)."""

from robustkit.cli import main

if __name__ == "__main__":
    main()
