package signals

import (
	"slices"
	"strings"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// Webhooks are streams an operator sets up for a SIEM that does not speak
// SSF (tokenctl ssf webhooks): delivery method DeliveryWebhook, no
// Receiver (CreatedBy names the operator), the events chosen by type,
// from every client or from the clients named, signed with a shared
// secret as Standard Webhooks has it.

// MaxWebhookClients bounds the clients a webhook names.
const MaxWebhookClients = 64

// WebhookSees reports whether webhook s may get a signal of visibility v,
// as Receiver.MaySee decides for a receiver's stream: a webhook naming no
// clients gets every signal (like a receiver of all events), one naming
// clients the signals about their sessions and those meant for every
// receiver (a key revoked). A signal addressed to one stream goes to that
// stream only.
func (s Stream) WebhookSees(v Visibility) bool {
	switch {
	case v.Stream != "":
		return v.Stream == s.ID
	case len(s.Clients) == 0:
		return true
	}
	return v.Deployment || (v.Client != "" && slices.Contains(s.Clients, v.Client))
}

// eventTypeNames are the names of the event types besides their URIs: the
// URI's last segment, and the tokend events each comes from.
var eventTypeNames = map[string]string{
	"session-revoked":              TypeSessionRevoked,
	"credential-compromise":        TypeCredentialCompromise,
	"account-purged":               TypeAccountPurged,
	events.SubjectErased:           TypeAccountPurged,
	"key-revoked":                  TypeKeyRevoked,
	"verification":                 TypeVerification,
	"stream-updated":               TypeStreamUpdated,
	string(domain.FamilyRevoked):   TypeSessionRevoked,
	events.SubjectRevoked:          TypeSessionRevoked,
	events.ClientRevoked:           TypeSessionRevoked,
	string(domain.ReplayDetected):  TypeCredentialCompromise,
	string(domain.KeyMismatch):     TypeCredentialCompromise,
	string(domain.RefreshRejected): TypeCredentialCompromise,
	events.KeyRevoked:              TypeKeyRevoked,
	events.SSFVerification:         TypeVerification,
	events.SSFStreamUpdated:        TypeStreamUpdated,
}

// EventType returns the event type URI name stands for: a URI of
// EventsSupported, its last segment (session-revoked), or a tokend event
// type the event is made from (family.revoked). Several tokend types make
// one event type, so naming one of them selects all of them. Errors are
// invalid_request.
func EventType(name string) (string, error) {
	if slices.Contains(EventsSupported, name) {
		return name, nil
	}
	if uri, ok := eventTypeNames[name]; ok {
		return uri, nil
	}
	return "", domain.Errorf(domain.EInvalidRequest, "unknown event type %q: name one of %s, or its URI, or the tokend event it comes from (family.revoked, token.replay_detected, ...)",
		truncate(name, 64), strings.Join(shortNames(), ", "))
}

func shortNames() []string {
	out := make([]string, 0, len(EventsSupported))
	for _, uri := range EventsSupported {
		out = append(out, uri[strings.LastIndexByte(uri, '/')+1:])
	}
	return out
}

// validClients checks the clients a webhook names.
func validClients(clients []string) ([]string, error) {
	if len(clients) > MaxWebhookClients {
		return nil, domain.Errorf(domain.EInvalidRequest, "a webhook names at most %d clients", MaxWebhookClients)
	}
	var out []string
	for _, c := range clients {
		if err := domain.ValidateName("client", c); err != nil {
			return nil, err
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out, nil
}
