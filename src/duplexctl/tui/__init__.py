"""`duplexctl dash`: a Textual dashboard of the daemons, their models, latency and logs.

Layout (one widget per file, as in posting and harlequin): ``data.py`` polls every source into
an immutable `Snapshot` (the view types are in ``views.py``, what the poller remembers between
polls in ``history.py``); ``widgets/`` holds one panel per file, each drawing a `Snapshot`;
``screens/`` holds the dashboard, the yes/no modal and the command-palette providers;
``app.py`` wires them up. Imports point one way, app -> screens -> widgets -> views, never
back (``tests/unit/test_tui_imports.py`` checks it). Importing this package imports nothing;
textual and grpc load with ``duplexctl.tui.app``.
"""

__all__: list[str] = []
