package registry

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

// TestRegistryReceivers: a client's SSF receiver role is stored as
// ssf_receiver and reaches every instance; an entry written before
// receivers existed reads as no receiver, and a stored role the domain
// refuses (a public receiver) refuses the client.
func TestRegistryReceivers(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustRegistry(t, js, nil), mustRegistry(t, js, nil)
	siem := webApp("siem")
	siem.Receiver = domain.ReceiverAll
	if _, err := a.Put(ctx, siem, clientHash1, 0, alice); err != nil {
		t.Fatal(err)
	}
	waitClient(t, b, "siem", "a receiver of every event", func(c domain.Client, ok bool) bool {
		return ok && c.Receiver == domain.ReceiverAll
	})
	if got, err := b.Get(ctx, "siem"); err != nil || got.Client.Receiver != domain.ReceiverAll {
		t.Fatalf("get: %+v, %v", got, err)
	}
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := kv.Get(ctx, clientKey("siem"))
	if err != nil {
		t.Fatal(err)
	}
	var stored struct {
		Client map[string]any `json:"client"`
	}
	if err := json.Unmarshal(raw.Value(), &stored); err != nil || stored.Client["ssf_receiver"] != "all" {
		t.Fatalf("stored %s: %v", raw.Value(), err)
	}

	entry := func(id, typ, method, extra string) []byte {
		secrets := ""
		if method != "none" {
			secrets = `"secrets":[{"sha256":"` + clientHash1 + `","created_at":"2026-01-01T00:00:00Z"}],`
		}
		return []byte(`{"client":{"client_id":"` + id + `","type":"` + typ + `","auth_method":"` + method + `",` + secrets +
			`"scopes":["openid"],"audiences":[],` + extra +
			`"access_ttl":"0s","refresh_idle_ttl":"0s","refresh_absolute_ttl":"0s","reuse_interval":"0s","on_replay":"revoke_family",` +
			`"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"},"change":{"action":"create","at":"2026-01-01T00:00:00Z","by":"alice"}}`)
	}
	for id, value := range map[string][]byte{
		"older":           entry("older", "confidential", "client_secret_basic", ""),
		"public-receiver": entry("public-receiver", "public", "none", `"ssf_receiver":"own",`),
		"own-receiver":    entry("own-receiver", "confidential", "client_secret_basic", `"ssf_receiver":"own",`),
	} {
		if _, err := kv.Put(ctx, clientKey(id), value); err != nil {
			t.Fatal(err)
		}
	}
	waitClient(t, a, "older", "registered, not a receiver", func(c domain.Client, ok bool) bool { return ok && !c.IsReceiver() })
	waitClient(t, a, "own-receiver", "a receiver of its own events", func(c domain.Client, ok bool) bool {
		return ok && c.Receiver == domain.ReceiverOwn
	})
	waitClient(t, a, "public-receiver", "refused", func(_ domain.Client, ok bool) bool { return !ok })
}
