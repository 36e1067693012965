"""edgefleet: shared plumbing for the command line (CLI, logging, atomic files)."""

# Static on purpose: reading it from the installed metadata costs a device daemon ~45 ms and
# a few MB of imports (importlib.metadata pulls in email and zipfile).
__version__ = "0.1.0"
