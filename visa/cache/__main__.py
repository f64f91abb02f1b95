"""`python -m visa.cache show|merge|prune|move-aside [CACHE_DIR]` (visa.cache.admin)."""

import sys

from visa.cache.admin import main

sys.exit(main())
