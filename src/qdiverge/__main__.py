from qdiverge.cli import main

main()
