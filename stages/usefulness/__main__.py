from stages.usefulness import main

main()
