from pollen.cli import main

main()
