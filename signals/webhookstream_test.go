package signals

import (
	"testing"

	"github.com/tokend/tokend/domain"
)

func TestWebhookSees(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef"
	all := Stream{ID: id}
	named := Stream{ID: id, Clients: []string{"web-app", "mobile"}}
	tests := []struct {
		name       string
		given      Visibility
		all, named bool
	}{
		{"a named client's session", Visibility{Client: "web-app"}, true, true},
		{"another client's session", Visibility{Client: "billing"}, true, false},
		{"a key revoked", Visibility{Deployment: true}, true, true},
		{"a subject revoked across clients", Visibility{}, true, false},
		{"its own verification", Visibility{Stream: id}, true, true},
		{"another stream's verification", Visibility{Stream: "fedcba9876543210fedcba9876543210"}, false, false},
	}
	for _, tc := range tests {
		if got := all.WebhookSees(tc.given); got != tc.all {
			t.Errorf("%s, every client: %v", tc.name, got)
		}
		if got := named.WebhookSees(tc.given); got != tc.named {
			t.Errorf("%s, named clients: %v", tc.name, got)
		}
	}
}

func TestEventType(t *testing.T) {
	for name, want := range map[string]string{
		TypeSessionRevoked:      TypeSessionRevoked,
		"session-revoked":       TypeSessionRevoked,
		"family.revoked":        TypeSessionRevoked,
		"subject.revoked":       TypeSessionRevoked,
		"client.revoked":        TypeSessionRevoked,
		"credential-compromise": TypeCredentialCompromise,
		"token.replay_detected": TypeCredentialCompromise,
		"token.key_mismatch":    TypeCredentialCompromise,
		"refresh.rejected":      TypeCredentialCompromise,
		"key.revoked":           TypeKeyRevoked,
		"key-revoked":           TypeKeyRevoked,
		"verification":          TypeVerification,
		"stream-updated":        TypeStreamUpdated,
	} {
		if got, err := EventType(name); err != nil || got != want {
			t.Errorf("%s: %s, %v", name, got, err)
		}
	}
	for _, bad := range []string{"", "token.issued", "https://schemas.openid.net/secevent/caep/event-type/credential-change", "Session-Revoked"} {
		if _, err := EventType(bad); domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
