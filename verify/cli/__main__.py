"""`python -m verify.cli`: the `verify` script's entry point, its import guarded (verify/__main__.py)."""

from verify.__main__ import main

main()
