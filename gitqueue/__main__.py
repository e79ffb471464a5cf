from gitqueue.cli import main

main()
