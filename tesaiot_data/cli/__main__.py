"""`python -m tesaiot_data.cli`: the `tesaiot-data` command."""

import sys

from tesaiot_data.cli import main

sys.exit(main())
