"""``python -m infra.grafana``: write the dashboards (infra/grafana/generate.py)."""

import sys

from infra.grafana.generate import main

sys.exit(main())
