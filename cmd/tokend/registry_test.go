package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
)

// tokenctlChange is what tokenctl clients add|rotate-secret --json print:
// the reply, with the secret first unless it was saved.
type tokenctlChange struct {
	ClientSecret string `json:"client_secret"`
	api.ClientChangeView
}

// TestRegistryAcrossInstances: a client registered with tokenctl through
// one instance verifies through the registry of another; a rotated secret
// replaces the old one there, which verifies until its grace period ends;
// no secret and no secret hash reaches tokend's logs or replies.
func TestRegistryAcrossInstances(t *testing.T) {
	natsURL := eventstest.MustJetStream(t).ClientURL()
	var logs []*syncBuffer
	var apps []*App
	for range 2 {
		cfg := testConfig(t)
		cfg.NATSURL = natsURL
		buf := &syncBuffer{}
		logs, apps = append(logs, buf), append(apps, MustApp(t, cfg, buf))
	}
	bin := buildTokenctl(t)
	var replies []string
	tokenctl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"--nats-url", natsURL, "--json"}, args...)...).Output()
		if err != nil {
			t.Fatalf("tokenctl %q: %v\n%s", args, err, out)
		}
		replies = append(replies, string(out))
		return string(out)
	}
	change := func(out string) tokenctlChange {
		t.Helper()
		var c tokenctlChange
		if err := json.Unmarshal([]byte(out), &c); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		return c
	}
	// waitVerifies waits until every instance's registry verifies secret at
	// the moment at(); the registries follow the bucket on their own.
	waitVerifies := func(secret string, at func() time.Time) {
		t.Helper()
		eventstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			for i, app := range apps {
				if c, ok := app.Clients().Lookup("web-app"); !ok || !c.VerifySecret(secret, at()) {
					return fmt.Errorf("instance %d does not verify the secret yet", i)
				}
			}
			return nil
		})
	}

	start := time.Now()
	added := change(tokenctl("clients", "add", "web-app", "--type", "confidential", "--scope", "openid api:read",
		"--audience", "https://api.example.com", "--by", "alice"))
	secret := added.ClientSecret
	if len(secret) != 43 || added.Action != "create" || added.Client.AuthMethod != "client_secret_basic" {
		t.Fatalf("add: %+v", added)
	}
	waitVerifies(secret, time.Now)
	t.Logf("the client verified on every instance %v after tokenctl started", time.Since(start))
	if c, _ := apps[1].Clients().Lookup("web-app"); c.CheckGrant([]string{"api:read"}, []string{"https://api.example.com"}) != nil ||
		domain.ErrorCode(c.CheckGrant([]string{"api:write"}, nil)) != domain.EInvalidScope {
		t.Fatal("the registered scopes are not what the registry checks")
	}

	// rotate-secret with a grace period: the new secret verifies, the old
	// one until the grace period ends.
	file := filepath.Join(t.TempDir(), "web-app.secret")
	rotated := change(tokenctl("clients", "rotate-secret", "web-app", "--grace", "1h", "--save", file, "--by", "alice"))
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	next := strings.TrimSpace(string(data))
	if rotated.ClientSecret != "" || len(next) != 43 {
		t.Fatalf("rotate-secret --save: %+v, file %q", rotated, data)
	}
	at, err := time.Parse(time.RFC3339, rotated.At)
	if err != nil {
		t.Fatal(err)
	}
	graceEnd := at.Add(time.Hour)
	waitVerifies(next, time.Now)
	for i, app := range apps {
		c, _ := app.Clients().Lookup("web-app")
		for _, check := range []struct {
			secret string
			at     time.Time
			want   bool
		}{
			{secret, time.Now(), true}, {secret, graceEnd.Add(-time.Second), true}, {secret, graceEnd.Add(time.Second), false},
			{next, graceEnd.Add(time.Second), true},
		} {
			if c.VerifySecret(check.secret, check.at) != check.want {
				t.Fatalf("instance %d: a secret at %v from the end of the grace period verifies: %v", i, check.at.Sub(graceEnd), !check.want)
			}
		}
	}

	// grace 0: the old secrets stop at once, everywhere.
	last := change(tokenctl("clients", "rotate-secret", "web-app", "--grace", "0s", "--by", "bob")).ClientSecret
	waitVerifies(last, time.Now)
	for i, app := range apps {
		c, _ := app.Clients().Lookup("web-app")
		if c.VerifySecret(secret, time.Now()) || c.VerifySecret(next, time.Now()) {
			t.Fatalf("instance %d: an old secret verifies after a rotation without grace", i)
		}
	}

	var history api.ClientHistory
	if err := json.Unmarshal([]byte(tokenctl("clients", "history", "web-app")), &history); err != nil {
		t.Fatal(err)
	}
	if len(history.Changes) != 3 || history.Changes[2].Action != "rotate_secret" || history.Changes[2].By != "bob" {
		t.Fatalf("history %+v", history)
	}
	tokenctl("clients", "show", "web-app")
	tokenctl("clients", "list")
	tokenctl("clients", "remove", "web-app", "--by", "carol")
	eventstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		for i, app := range apps {
			if _, ok := app.Clients().Lookup("web-app"); ok {
				return fmt.Errorf("instance %d still has the removed client", i)
			}
		}
		return nil
	})

	secrets := []string{secret, next, last}
	for _, s := range secrets {
		hash := domain.HashClientSecret(s)
		for i, l := range logs {
			if strings.Contains(l.String(), s) || strings.Contains(l.String(), hash) {
				t.Fatalf("instance %d logged a client secret or its hash", i)
			}
		}
		for _, r := range replies {
			if strings.Contains(r, hash) {
				t.Fatalf("a reply shows a secret hash: %s", r)
			}
		}
	}
	// tokenctl adds the secrets it made to its own output; tokend's replies
	// (rotate-secret --save, show, list, history, remove) never hold one.
	for _, r := range append([]string{replies[1]}, replies[3:]...) {
		for _, s := range secrets {
			if strings.Contains(r, s) {
				t.Fatalf("a reply shows a secret: %s", r)
			}
		}
	}
	for i, l := range logs {
		if n := strings.Count(l.String(), "client registry changed"); n != 4 {
			t.Fatalf("instance %d logged %d registry changes, want 4:\n%s", i, n, l)
		}
	}
}

// TestRegistryAuthPermissions: with the shipped auth.conf, an admin
// registers a client through tokend, which may write TOKENS_CLIENTS; no
// other role may administer clients, and none, the admin included, may
// read the bucket, which holds the secret hashes.
func TestRegistryAuthPermissions(t *testing.T) {
	d := mustSecureDeployment(t)
	bin := buildTokenctl(t)
	tokenctl := func(role string, args ...string) (string, error) {
		base := []string{"--nats-url", d.url, "--tls-ca", d.ca, "--nkey", d.seeds[role], "--inbox-prefix", "_INBOX_" + role, "--timeout", "3s"}
		out, err := exec.Command(bin, append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := tokenctl("admin", "clients", "add", "web-app", "--type", "confidential", "--scope", "openid", "--by", "alice"); err != nil ||
		!strings.Contains(out, "registered client web-app") {
		t.Fatalf("add as admin: %v\n%s", err, out)
	}
	if _, ok := d.app.Clients().Lookup("web-app"); !ok {
		t.Fatal("the client the admin added is not registered")
	}
	if out, err := tokenctl("admin", "clients", "history", "web-app"); err != nil || !strings.Contains(out, "alice") {
		t.Fatalf("history as admin: %v\n%s", err, out)
	}
	for _, role := range []string{"issuer", "refresher", "auditor"} {
		if out, err := tokenctl(role, "clients", "list"); err == nil {
			t.Fatalf("the %s listed the clients:\n%s", role, out)
		}
	}
	for _, role := range []string{"admin", "auditor"} {
		nc, errs := d.connect(t, role)
		js, _ := jetstream.New(nc, jetstream.WithDefaultTimeout(time.Second))
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		if _, err := js.KeyValue(ctx, registry.Bucket); err == nil {
			t.Fatalf("the %s opened the client registry bucket", role)
		}
		cancel()
		denied(t, nc, errs, "$JS.API.DIRECT.GET.KV_TOKENS_CLIENTS.$KV.TOKENS_CLIENTS.d2ViLWFwcA")
	}
}

func TestClientRegistryConfig(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	cfg, err := parseConfig(nil, noEnv, io.Discard)
	if err != nil || cfg.ClientRegistry {
		t.Fatalf("by default the registry is not enforced: %+v, %v", cfg.ClientRegistry, err)
	}
	if cfg, err = parseConfig([]string{"--client-registry"}, noEnv, io.Discard); err != nil || !cfg.ClientRegistry {
		t.Fatalf("--client-registry: %v, %v", cfg.ClientRegistry, err)
	}
	env := func(name string) (string, bool) { return "true", name == "TOKEND_CLIENT_REGISTRY" }
	if cfg, err = parseConfig(nil, env, io.Discard); err != nil || !cfg.ClientRegistry {
		t.Fatalf("TOKEND_CLIENT_REGISTRY=true: %v, %v", cfg.ClientRegistry, err)
	}
	if _, err := parseConfig([]string{"--client-registry=maybe"}, noEnv, io.Discard); err == nil {
		t.Fatal("--client-registry=maybe accepted")
	}
	// Off, the registry is opened and administered all the same.
	app := MustApp(t, testConfig(t), nil)
	if app.Clients() == nil {
		t.Fatal("no registry without --client-registry")
	}
	e, err := app.Clients().Put(context.Background(), domain.Client{ID: "spa", Type: domain.ClientPublic}, "", 0, registry.Actor{By: "test"})
	if err != nil || e.Revision == 0 {
		t.Fatalf("registering a client with the registry not enforced: %v", err)
	}
}
