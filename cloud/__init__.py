"""The cloud end of the data loop: the receiver of the gateways' uploads, the Parquet dataset it
writes (``protocol.dataset``) and the queries and exports over it."""
