"""The webhook delivery service (python -m webhooks): posts each event of the events stream
to the subscriptions it matches, signed per Standard Webhooks, retried until delivered or
SMSQ_WEBHOOK_RETRY_S has passed. docs/webhooks.md."""
