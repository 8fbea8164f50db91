from wcl.explore import main

main()
