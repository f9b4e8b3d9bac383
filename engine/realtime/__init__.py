"""The realtime core, pure code (no trio, no I/O): ``history`` (per-channel ``seq``,
bounded events, replay, epoch), ``hub`` (subscriptions) and ``protocol`` (every frame
the server sends, in both encodings), put together by ``core.Realtime``."""
