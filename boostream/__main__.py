from boostream.cli import main

raise SystemExit(main())
