"""The release repository and the operator's signing tools (``edgefleet keys``, ``edgefleet
release``)."""
