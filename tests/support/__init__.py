"""Test support: private redis-server processes and misbehaving sockets."""
