from inferbatch.cli import main

main()
