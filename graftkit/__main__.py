from graftkit.cli import main

raise SystemExit(main())
