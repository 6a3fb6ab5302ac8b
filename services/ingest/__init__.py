"""Usage ingest: Redis stream → ledger charges → read models, with dead letters.

- `processor`: the synchronous core. `IngestProcessor.process(entries)` decodes raw stream
  entries into usage events, charges the valid ones a slice (one append) at a time, lets the
  projections catch up, then writes the dead letters. It never acknowledges anything.
- `dead_letters`: the reasons, and the dead-letter stream `<stream>.dead` with its index
  (`{<stream>.dead}.index`, source id → letter id), so a redelivered batch does not
  dead-letter the same entry twice.
- `consumer`: `IngestService` wires the processor to FastStream (a batch subscriber in
  consumer group `ledger`, acknowledging each batch after it is charged) with a reclaimer for
  entries stuck on dead consumers; `create_app` runs it as a standalone FastStream app.
- `stream`: the consumer group as Redis keeps it (create, lag, claim, trim).
"""
