"""Face comparison service: the HTTP contract, its settings and the engines (what the connector
shares with it lives in faceid_core, beside this package)."""
