import sys

from mixgrpo_ray.cli import main

sys.exit(main())
