"""The realtime core: channel histories and the hub, driven by the commit path.

The publications of each committed mutation are handed over as one batch, in log
order, right where the mutation is applied. That keeps every channel's ``seq`` and
history consistent with the engine state at every point between two applied records,
which is what a snapshot needs, and gives every channel its events in commit order. A
subscribe is synchronous too, hence atomic with respect to publishing: the caller gets
the answer and the replay, and queues both before any later event can be published, so
replay and live events have no gap and no duplicate. Nothing here waits or does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.channels import ChannelKey, key_of
from engine.fanout import Publication
from engine.realtime.history import Histories, RealtimeStats, Replay
from engine.realtime.hub import Hub, Subscriber


class Realtime:
    def __init__(
        self,
        *,
        epoch: str,
        history_limit: int = 1000,
        total_history_limit: int = 500_000,
    ) -> None:
        self.stats = RealtimeStats()
        self.histories = Histories(
            epoch=epoch,
            history_limit=history_limit,
            total_history_limit=total_history_limit,
            stats=self.stats,
        )
        self.hub = Hub(self.stats)

    @property
    def epoch(self) -> str:
        return self.histories.epoch

    def publish(self, publications: list[Publication]) -> None:
        """Record the events of one committed mutation and push them to subscribers."""
        if not publications:
            return
        # Live frames first, while each payload still holds its data (recording
        # compacts it to JSON): the seq each event gets is its channel's seq before the
        # batch, counted on. Nothing can observe the moment in between.
        heads: dict[ChannelKey, int] = {}
        for key, item in self.hub.watched(publications):
            seq = (heads[key] if key in heads else self.histories.seq(key)) + 1
            heads[key] = seq
            self.hub.deliver(key, seq, item)
        self.histories.append(publications)

    def subscribe(
        self, session: Subscriber, channel: str, *, since: int | None, epoch: str | None
    ) -> Replay:
        """Subscribe ``session`` and return what it is owed now: the channel's head,
        whether ``since`` resumed, and the events to replay. The caller queues the
        answer and the replay before it next yields."""
        key = key_of(channel)
        replay = self.histories.replay(key, since, epoch)
        self.hub.add(session, key)
        self.stats.events_delivered += len(replay.events)
        return replay

    def unsubscribe(self, session: Subscriber, channel: str) -> bool:
        return self.hub.remove(session, key_of(channel))

    def drop(self, session: Subscriber, channels: Iterable[str]) -> None:
        self.hub.remove_all(session, [key_of(channel) for channel in channels])
