from raystream.cli import main

main()
