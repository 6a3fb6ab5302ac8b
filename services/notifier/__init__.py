"""The notifier: derives notifications from the log, publishes them on a Redis stream and
delivers them to webhook endpoints, in a process of its own under `ledger serve`."""
