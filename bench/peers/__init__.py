"""Peer servers for `python -m bench compare`: the same fan-out workload served by
python-socketio and by a bare `websockets` broadcast server."""
