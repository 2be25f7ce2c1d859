"""The ``mliscan`` command line: one thin file per command (nothing imports this package)."""
