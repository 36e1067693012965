"""The site's devices: the inventory built from their status and events, and the commands sent
to them."""
