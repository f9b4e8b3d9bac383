"""The cluster: a primary that ships its log to a Redis stream, and replicas that
follow it (docs/cluster.md)."""
