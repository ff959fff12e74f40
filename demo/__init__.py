"""The whole flow on one machine: device simulator, connector and function as real processes."""
