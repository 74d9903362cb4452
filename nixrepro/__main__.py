"""``python -m nixrepro`` is the ``nixrepro`` command."""

from .cli import main

main()
