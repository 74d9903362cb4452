"""The web viewer (``nixrepro ui``) and the one-file HTML report (``nixrepro report``).

Read only, from the records alone. Every page is built on the server from escaped text
(:mod:`nixrepro.ui.html`: a string is escaped unless it is :class:`~nixrepro.ui.html.Markup`); the
charts are drawn in the browser by uPlot (``static/uplot``, vendored: scripts/update-vendor.sh)
from JSON that :mod:`nixrepro.ui.charts` makes of each run's metrics.jsonl. docs/ui.md says why the
server is the standard library's.

Nothing outside this package imports it at start-up: ``nixrepro run`` and ``import nixrepro`` load
none of it (the CLI's ``ui`` and ``report`` commands import it when they run).
"""
