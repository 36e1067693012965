"""The wire contract every side speaks: payload schemas, the delta container, serial frames."""
