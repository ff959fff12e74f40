"""On-prem connector: device snapshots, encrypted enrollments and the API the macro calls."""
