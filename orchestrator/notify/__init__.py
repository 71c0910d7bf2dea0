"""Notifications (`spec.notify`): webhooks told after a state change is recorded in the job store.

`events` derives what is due from the store's records, `outbox` keeps each notification in the job's
directory until it is delivered (or given up on), `body` makes the Slack text and the signed JSON, `refs`
reads the webhook's URL and key by reference, and `send` delivers in the background, retrying with backoff.
docs/design.md, "Notifications", says what is sent when and how it is signed.
"""
