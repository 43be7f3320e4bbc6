"""Identity: who is calling (the OAuth resource server) and what the gateway presents upstream."""
