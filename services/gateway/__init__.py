"""The gateway: the only HTTP ingress — REST API, events stream, OpenAPI; auth, roles, audit."""
