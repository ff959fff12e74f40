"""Face comparison service: HTTP contract, engines and the helpers the connector shares."""
