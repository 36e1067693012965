"""The site daemon and the operator's tooling: signing, repository, ingest, uplink, rollouts."""
