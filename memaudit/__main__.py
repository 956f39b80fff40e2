from memaudit.cli import main

main()
