"""`python -m verify`: the same CLI as the `verify` script (verify/cli/app.py `main`)."""

from verify.cli.app import main

main()
