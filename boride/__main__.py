from boride.entry import main

main()
