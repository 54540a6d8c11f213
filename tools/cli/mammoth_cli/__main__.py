from mammoth_cli.app import main

main()
