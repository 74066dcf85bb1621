from stages.report import main

main()
