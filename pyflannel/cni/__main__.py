"""``python -m pyflannel.cni``: run the CNI plugin (what the installed ``flannel`` executable does)."""

import sys

from pyflannel.cni.plugin import main

sys.exit(main())
