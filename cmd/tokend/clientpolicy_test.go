package main

import (
	"testing"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
)

// TestClientPolicyApplies: a registered client's allowed scopes and
// audiences bound what can be issued to it, its lifetimes replace the
// deployment's, and with --client-registry a client it does not know gets
// invalid_client over NATS; without the flag unknown clients work as in v1.
func TestClientPolicyApplies(t *testing.T) {
	for _, enforce := range []bool{false, true} {
		cfg := testConfig(t)
		cfg.ClientRegistry = enforce
		app := MustApp(t, cfg, nil)
		nc := eventstest.MustConnect(t, app.NATSURL())
		c := domain.Client{ID: "tight", Type: domain.ClientPublic, Scopes: []string{"openid"}, Audiences: []string{"https://api.example.com"},
			AccessTTL: time.Minute, RefreshIdleTTL: time.Hour, RefreshAbsoluteTTL: 2 * time.Hour}
		if _, err := app.Clients().Put(t.Context(), c, "", 0, registry.Actor{By: "test"}); err != nil {
			t.Fatal(err)
		}
		issue := func(client, scope string, aud ...string) reply {
			return call(t, nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "user-policy", ClientID: client, Scope: scope, Audience: aud})
		}
		wantError(t, issue("tight", "openid admin", "https://api.example.com"), "invalid_scope")
		wantError(t, issue("tight", "openid", "https://evil.example.com"), "invalid_target")
		r := issue("tight", "openid", "https://api.example.com")
		if r.errCode != "" {
			t.Fatalf("an allowed issue: %s", r.raw)
		}
		expires, _ := time.Parse(time.RFC3339, r.token.RefreshTokenExpiresAt)
		if r.token.ExpiresIn != 60 || time.Until(expires) > time.Hour+time.Minute {
			t.Fatalf("the client's lifetimes were not used: expires_in %d, refresh token until %v", r.token.ExpiresIn, expires)
		}
		next := mustRefresh(t, nc, r.token.RefreshToken, "tight")
		if next.ExpiresIn != 60 {
			t.Fatalf("a refresh for the client: expires_in %d", next.ExpiresIn)
		}
		if r := call(t, nc, "tokens.admin.clients.put", map[string]any{"client_id": "long", "type": "public", "scopes": []string{},
			"audiences": []string{}, "refresh_absolute_ttl": (2 * cfg.AbsoluteTTL).String(), "by": "test"}); r.err.Error != "invalid_request" {
			t.Fatalf("a client outliving the deployment's absolute lifetime: %s", r.raw)
		}
		unknown := issue("nobody", "openid")
		if enforce {
			wantError(t, unknown, "invalid_client")
			wantError(t, refresh(t, nc, next.RefreshToken, "nobody"), "invalid_client")
		} else if unknown.errCode != "" {
			t.Fatalf("without --client-registry an unknown client was refused: %s", unknown.raw)
		}
	}
}
