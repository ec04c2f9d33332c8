"""The CLI's command groups, one module each; ``services.cli.main`` wires them."""
