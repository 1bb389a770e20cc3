import sys

from byol.entry import main

sys.exit(main())
