package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/signals"
)

// TestSSFSecretsSealedAndRotated: tokend stores a push stream's
// authorization_header sealed, and when a key rotation is promoted on one
// instance the secret is sealed again under the new MAC key, and still
// opens on every instance.
func TestSSFSecretsSealedAndRotated(t *testing.T) {
	_, apps := mustInstances(t, 2, nil)
	ctx := t.Context()
	push := &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: "https://rp.example/ssf", AuthorizationHeader: "Bearer s3cret"}
	st, err := apps[0].api.Streams.Create(ctx, signals.NewStream{Receiver: "rp-1", Request: signals.StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := apps[0].js.KeyValue(ctx, signals.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	sealedUnder := func() (string, error) {
		e, err := kv.Get(ctx, st.ID)
		if err != nil {
			return "", err
		}
		if bytes.Contains(e.Value(), []byte("s3cret")) {
			t.Fatalf("stored in the clear: %s", e.Value())
		}
		var stored struct {
			Secrets signals.SealedSecrets `json:"secrets"`
		}
		if err := json.Unmarshal(e.Value(), &stored); err != nil || stored.Secrets.Authorization == nil {
			return "", fmt.Errorf("not sealed: %s", e.Value())
		}
		return stored.Secrets.Authorization.Kid, nil
	}
	first, _, _ := apps[0].api.Tokens.Keyring().Loaded().SealKey()
	if kid, err := sealedUnder(); err != nil || kid != first {
		t.Fatalf("sealed under %s, not the current MAC key %s: %v", kid, first, err)
	}

	ring := apps[1].api.Tokens.Keyring()
	if _, err := ring.Stage(ctx, 0); err != nil {
		t.Fatal(err)
	}
	promoted, err := ring.Promote(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	second, _, _ := promoted.SealKey()
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if kid, err := sealedUnder(); err != nil || kid != second {
			return fmt.Errorf("sealed under %s, waiting for %s: %v", kid, second, err)
		}
		return nil
	})
	for _, app := range apps {
		eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			got, ok := app.api.Streams.Lookup(st.ID)
			if !ok {
				return fmt.Errorf("stream %s not seen", st.ID)
			}
			sec, err := app.api.Streams.DeliverySecrets(got)
			if err != nil || sec.Authorization != push.AuthorizationHeader {
				return fmt.Errorf("opened %+v: %v", sec, err)
			}
			return nil
		})
	}
}
