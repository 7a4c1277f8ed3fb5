from sentistream.cli.app import main

main()
