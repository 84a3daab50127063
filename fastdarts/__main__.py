from fastdarts.cli import main

raise SystemExit(main())
