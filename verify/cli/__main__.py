from verify.cli.app import main

main()
