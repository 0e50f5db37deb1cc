// Package signals is tokend's Shared Signals (SSF 1.0) transmitter: the
// stream model, the mapping of tokend's events to CAEP/RISC security
// events, SET encoding, and the store of streams (KV bucket
// TOKENS_SSF_STREAMS). docs/protocol.md, "Security events (SSF)", is the
// users' reference; this is the map for code built on it.
//
// Streams (stream.go, store.go):
//
//   - Stream is a stored stream: SSF 1.0 section 8.1.1's configuration
//     plus its Receiver (client id; empty for an operator's webhook),
//     Status and Reason, ExcludedSubjects, CreatedAt and UpdatedAt.
//     Stream.Config and Stream.StatusOf render it for its receiver, with
//     the deployment's Transmitter (iss, the poll endpoint_url).
//   - StreamRequest holds the receiver-supplied fields; Stream.Patch and
//     Stream.Replace apply an update (PATCH) or a replacement (PUT) and
//     validate them; Stream.SetStatus, AddSubject and RemoveSubject do the
//     rest. Errors are *domain.Error (invalid_request).
//   - Store: Open (with OnChange, how delivery workers learn of every
//     stream created, changed or deleted on any instance), Create, Get,
//     List, ListAll, Update (compare-and-set on Stream.Revision), SetStatus,
//     AddSubject, RemoveSubject, Delete; Lookup and Streams from memory.
//     The store does not authorize: callers check Stream.Receiver.
//   - StatusChange says what a status change means for the delivery
//     consumer (hold, drop, restart from now). Store.ChangeStatus is a
//     change the receiver did not ask for (an operator's, the store's
//     own): it appends ssf.stream_updated first.
//
// Delivery secrets (seal.go, tend.go):
//
//   - A push stream's authorization_header and a webhook's signing
//     secrets are stored sealed (AES-256-GCM under a key derived from the
//     current MAC key, SealingKeys), never in the clear and never shown.
//     Store.DeliverySecrets opens them for the delivery only.
//   - Store.UseKeys follows the keyring: each instance seals again, under
//     the current key, what was sealed under another, and pauses (with
//     ReasonSecretLost, announced) a stream whose secret was lost with a
//     revoked key.
//
// Webhooks (webhookstream.go): streams with DeliveryWebhook that an operator
// sets up (no Receiver), for the events of every client or of the
// Clients named (Stream.WebhookSees), the event types named as URIs,
// short names or tokend event types (EventType); Store.RotateWebhookSecret
// rotates their secret with an overlap.
//
// Events (mapping.go):
//
//   - Mapper.Message maps a message of the TOKENS stream (family event or
//     deployment event, by subject) to zero or more Signal values: event
//     type URI, sub_id, event object, toe, txn, and Visibility (the client
//     whose sessions it is about, deployment-wide, or one stream).
//   - Stream.Wants applies a stream's events_delivered and removed
//     subjects. Whether a receiver may see a signal at all is decided from
//     Visibility with the receiver's registration (own or all).
//
// SETs (set.go):
//
//   - Signal.Claims builds a SET's claims for a stream; its jti (JTI) is
//     the same for every delivery of one event to one stream, so receivers
//     drop duplicates. EncodeSET signs RS256 with typ secevent+jwt and the
//     kid of the Signer's key.
//
// Delivery (engine.go, deliver.go, poll.go, webhook.go):
//
//   - Engine, one per instance, follows the streams (Changed, the Store's
//     OnChange) and keeps one durable consumer per stream on TOKENS
//     (ConsumerName). Push (RFC 8935) and webhook (Standard Webhooks)
//     streams are sent by the one instance pinned to their consumer, one
//     message at a time, in order, retried until the receiver takes it;
//     Poll answers RFC 8936 polls on any instance, acknowledgements going
//     through TOKENS_SSF_ACKS (AcksBucket). Delivery is at least once: a
//     SET sent again has the same jti.
//   - Visible decides from a receiver's registration which signals it
//     may see; Stream.Wants what its stream asked for.
//   - DeliveryMetrics is told of deliveries, retries, failures, lag and
//     status, per stream id.
package signals
