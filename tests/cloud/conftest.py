"""The gateway's fixtures (a gateway process factory), for the round trips through ``cloud``."""

from tests.gateway.conftest import make_gateway  # noqa: F401
