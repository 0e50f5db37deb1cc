package signals

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// WebhookEvent is the JSON body of a webhook request: one event, in the
// shape the Standard Webhooks spec recommends (type, timestamp, data).
// docs/protocol.md, "Webhooks", is its reference.
type WebhookEvent struct {
	// Type is the event type URI, as in a SET's events claim.
	Type string `json:"type"`
	// Timestamp is when the event happened (a SET's toe).
	Timestamp time.Time   `json:"timestamp"`
	Data      WebhookData `json:"data"`
}

// WebhookData is what a SET would carry, as plain JSON.
type WebhookData struct {
	// ID is the SET's jti, the same for every delivery of this event to
	// this webhook, and the request's webhook-id: receivers drop
	// duplicates by it.
	ID       string `json:"id"`
	Issuer   string `json:"iss"`
	StreamID string `json:"stream_id"`
	// Txn is the tokend event's id (joins it to the audit trail).
	Txn string `json:"txn"`
	// TimeOfEvent is Timestamp in seconds (a SET's toe).
	TimeOfEvent int64   `json:"toe"`
	SubjectID   Subject `json:"sub_id"`
	// Event is the event object, as under Type in a SET.
	Event any `json:"event"`
}

// webhookEvent is the body of the webhook request carrying sig on st.
func webhookEvent(issuer string, st Stream, sig Signal) WebhookEvent {
	return WebhookEvent{Type: sig.Type, Timestamp: sig.Time.UTC(), Data: WebhookData{
		ID: JTI(st.ID, sig.Txn, sig.Type), Issuer: issuer, StreamID: st.ID, Txn: sig.Txn,
		TimeOfEvent: sig.Time.Unix(), SubjectID: sig.Subject, Event: sig.Event}}
}

// postWebhook sends one event to a webhook, signed as the Standard
// Webhooks spec says: webhook-id (the jti), webhook-timestamp (now, Unix
// seconds) and webhook-signature (v1, HMAC-SHA256 over id.timestamp.body)
// under each of the webhook's secrets, newest first and space-separated,
// so a SIEM holding either verifies during a rotation. Any 2xx answer
// delivers it; anything else is retried (a webhook has no error codes to
// tell a bad event from a bad endpoint, and dropping events for a SIEM is
// worse than waiting).
func (e *Engine) postWebhook(ctx context.Context, st Stream, sig Signal) attempt {
	secrets, a, ok := e.secrets(st)
	if !ok {
		return a
	}
	if len(secrets.Webhook) == 0 {
		return attempt{outcome: failed, errCode: "no_secrets", detail: "the webhook has no signing secret"}
	}
	ev := webhookEvent(e.o.Mapper.Issuer, st, sig)
	body, err := json.Marshal(ev)
	if err != nil {
		return attempt{outcome: failed, errCode: "encoding", detail: err.Error()}
	}
	now := e.now()
	signatures := make([]string, 0, len(secrets.Webhook))
	for _, secret := range secrets.Webhook {
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			// The library's error names no part of the secret.
			return attempt{outcome: failed, errCode: "bad_secret", detail: err.Error()}
		}
		signature, err := wh.Sign(ev.Data.ID, now, body)
		if err != nil {
			return attempt{outcome: failed, errCode: "signing", detail: err.Error()}
		}
		signatures = append(signatures, signature)
	}
	header := http.Header{"Content-Type": {"application/json"}}
	header.Set(standardwebhooks.HeaderWebhookID, ev.Data.ID)
	header.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
	header.Set(standardwebhooks.HeaderWebhookSignature, strings.Join(signatures, " "))
	a = e.post(ctx, st.Delivery.EndpointURL, header, body)
	if a.status >= 200 && a.status < 300 {
		a.outcome = delivered
	}
	return a
}
