package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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

// TestSSFAdminAuthPermissions: with the shipped auth.conf, an admin sets
// up a webhook and pauses it through tokend (tokens.admin.ssf.*); no
// other role may, and none, the admin included, may read
// TOKENS_SSF_STREAMS.
func TestSSFAdminAuthPermissions(t *testing.T) {
	d := mustSecureDeployment(t)
	bin := buildTokenctl(t)
	tokenctl := func(role string, args ...string) (string, error) {
		base := []string{"--nats-url", d.url, "--tls-ca", d.ca, "--nkey", d.seeds[role], "--inbox-prefix", "_INBOX_" + role, "--timeout", "3s"}
		out, err := exec.Command(bin, append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := tokenctl("admin", "--json", "ssf", "webhooks", "add", "--url", "https://siem.example/hook", "--by", "alice")
	if err != nil {
		t.Fatalf("webhooks add as admin: %v\n%s", err, out)
	}
	var added struct {
		StreamID string `json:"stream_id"`
	}
	if err := json.Unmarshal([]byte(out), &added); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := tokenctl("admin", "ssf", "streams", "pause", added.StreamID, "--reason", "test", "--by", "alice"); err != nil ||
		!strings.Contains(out, "paused stream "+added.StreamID) {
		t.Fatalf("pause as admin: %v\n%s", err, out)
	}
	for _, role := range []string{"issuer", "refresher", "auditor"} {
		if out, err := tokenctl(role, "ssf", "streams", "list"); err == nil {
			t.Fatalf("the %s listed the SSF streams:\n%s", role, out)
		}
	}
	for _, role := range []string{"admin", "auditor"} {
		nc, errs := d.connect(t, role)
		js, _ := jetstream.New(nc, jetstream.WithDefaultTimeout(time.Second))
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		if _, err := js.KeyValue(ctx, signals.Bucket); err == nil {
			t.Fatalf("the %s opened the SSF streams bucket", role)
		}
		cancel()
		denied(t, nc, errs, "$JS.API.DIRECT.GET.KV_TOKENS_SSF_STREAMS.$KV.TOKENS_SSF_STREAMS."+added.StreamID)
	}
}
