"""Development tools: the device simulator, fake outside services, real processes, the local stack.

Production code (function/, connector/) never imports this package (devkit/README.md)."""
