"""Write a small log with today's main: the fixture for old-log replay/audit tests."""
import sqlite3, sys
from pathlib import Path
from collections import Counter
from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.idempotency import payload_digest
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.sqlite_store import SqliteEventStore
from projections.replay import balances_as_of
from projections.balances import dump
from schemas.commands import ChargeUsage
from schemas.usage import UsageEvent
from tests.workload import START, Workload

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
db = out / "ledger.sqlite3"
for p in out.glob("ledger.sqlite3*"): p.unlink()
store = SqliteEventStore(db)
clock = ManualClock(us_from_datetime(START))
ledger = Ledger(store, load_rate_card(), clock)
w = Workload(seed=20261203, subscriptions=2, seats_per_subscription=3, events=250, batch_size=20, heavy=True)
for step in w.steps():
    clock.set(max(clock.now_us(), us_from_datetime(step.at)))
    ledger.tick()
    cmds = [ChargeUsage(c, payload_digest(c)) if isinstance(c, UsageEvent) else c for c in step.commands]
    ledger.execute(cmds)
from datetime import timedelta
from ledger.log import datetime_from_us
from schemas.commands import BuyPack
big = lambda i, seat: UsageEvent(event_id=f"big-{i}", subscription_id="sub-0", seat_id=seat, model="qwen3.6-plus", occurred_at=datetime_from_us(clock.now_us()), output_tokens=50_000_000)
clock.advance(1_000_000); ledger.tick()
outs = ledger.execute([ChargeUsage(big(i, "sub-0-seat-0"), payload_digest(big(i, "sub-0-seat-0"))) for i in range(25)])
print([o.status for o in outs])
clock.advance(1_000_000)
ledger.execute([BuyPack("sub-0", "pack-rescue")])
from schemas.commands import RemoveSeat
ledger.execute([RemoveSeat("sub-1", "sub-1-seat-2")])
# let a last pack expire and a cycle start
clock.advance(40 * 86_400 * 1_000_000); ledger.tick()
head = store.head()
types = Counter(r.event().__struct_config__.tag for r in store.read())
print(head.position, head.hash.hex(), dict(types))
import json
pos = [0, 50, 150, head.position - 6, head.position - 5, head.position - 3, head.position]
(out / "balances.json").write_text(json.dumps({str(p): json.loads(dump(balances_as_of(store, p))) for p in pos}, sort_keys=True, indent=1) + "\n")
(out / "head.json").write_text(f'{{"position": {head.position}, "hash": "{head.hash.hex()}"}}\n')
store.close()
c = sqlite3.connect(db); c.execute("PRAGMA wal_checkpoint(TRUNCATE)"); c.execute("PRAGMA journal_mode=DELETE"); c.execute("VACUUM"); c.close()
