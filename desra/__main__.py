from desra.cli import main

raise SystemExit(main())
