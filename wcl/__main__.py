from wcl.cli import main

main()
