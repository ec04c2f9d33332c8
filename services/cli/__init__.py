"""The ``flowyard`` command: a client of the services, and host of the embedded default."""
