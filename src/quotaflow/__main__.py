from quotaflow.cli.main import main

raise SystemExit(main())
