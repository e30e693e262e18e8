from addon.cli.main import main

main()
