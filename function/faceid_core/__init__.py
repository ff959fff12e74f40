"""What the function and the connector share, without any I/O framework: errors, structured logs,
Secret Manager reads, checked image decoding and the API contract (README.md says what it may
import)."""
