from boride.cli import main

main()
