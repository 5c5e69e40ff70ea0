"""What the server records of each request: metrics, audit log, request logs."""
