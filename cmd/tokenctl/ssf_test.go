package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/signals"
	"github.com/tokend/tokend/tokens"
)

// startSSF runs tokend's SSF administration (the real endpoints, stream
// store, keyring and outbox) on an in-process JetStream server and
// returns its URL and the store.
func startSSF(t *testing.T) (string, *signals.Store) {
	t.Helper()
	ctx := context.Background()
	url := eventstest.MustJetStream(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	js, _ := jetstream.New(nc)
	subjects := events.Subjects{Prefix: "tokens"}
	stream, err := events.Setup(ctx, js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	ring, err := keys.OpenKeyring(ctx, js, 1, keys.Lifetimes{Refresh: time.Hour, Access: time.Minute}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	outbox := events.NewStore(nc, js, stream, subjects)
	streams, err := signals.Open(ctx, js, signals.Options{Replicas: 1, Keys: ring.Loaded(), Outbox: outbox})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(streams.Stop)
	access, err := api.NewAccessTokens(ring.Loaded().Keys, "https://tokend.example", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := &api.Service{Tokens: tokens.NewService(nil, ring.Codec(), domain.Policy{}, time.Now), Access: access, Streams: streams, Outbox: outbox,
		Log: slog.New(slog.DiscardHandler), Now: time.Now}
	if err := s.Start(nc, "tokens"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return url, streams
}

var webhookSecretLine = regexp.MustCompile(`secret: (whsec_[A-Za-z0-9+/]{43}=)\n`)

func TestSSFStreams(t *testing.T) {
	url, streams := startSSF(t)
	asUser(t, "dana")
	ctx := context.Background()
	ctl := func(args ...string) string { return mustCtl(t, append([]string{"--nats-url", url}, args...)...) }
	push := &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: "https://rp.example/ssf", AuthorizationHeader: "Bearer s3cret"}
	st, err := streams.Create(ctx, signals.NewStream{Receiver: "rp-1", Request: signals.StreamRequest{Delivery: push}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := streams.RemoveSubject(ctx, st.ID, signals.IssSub("https://tokend.example", "user-42")); err != nil {
		t.Fatal(err)
	}
	poll, err := streams.Create(ctx, signals.NewStream{Receiver: "rp-2", Request: signals.StreamRequest{EventsRequested: []string{signals.TypeSessionRevoked}}})
	if err != nil {
		t.Fatal(err)
	}

	out := ctl("ssf", "streams", "list")
	for _, want := range []string{st.ID + `\s+rp-1\s+push\s+enabled\s+https://rp.example/ssf\s+all\s`, poll.ID + `\s+rp-2\s+poll\s+enabled\s+-\s+1\s`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Fatalf("list lacks %s:\n%s", want, out)
		}
	}
	out = ctl("ssf", "streams", "show", st.ID)
	for _, want := range []string{"receiver:         rp-1", "authorization:    set (sealed; never shown)", "subjects:         1 removed", `"sub":"user-42"`} {
		if !strings.Contains(out, want) {
			t.Fatalf("show lacks %q:\n%s", want, out)
		}
	}
	for _, o := range []string{out, ctl("--json", "ssf", "streams", "show", st.ID), ctl("--json", "ssf", "streams", "list")} {
		if strings.Contains(o, "s3cret") {
			t.Fatalf("the secret is shown:\n%s", o)
		}
	}

	out = ctl("ssf", "streams", "pause", st.ID, "--reason", "receiver overloaded")
	if !strings.Contains(out, "paused stream "+st.ID) || !strings.Contains(out, "status:           paused: receiver overloaded") {
		t.Fatalf("pause printed\n%s", out)
	}
	if got, _ := streams.Get(ctx, st.ID); got.Status != signals.StatusPaused || got.Reason != "receiver overloaded" {
		t.Fatalf("after pause: %+v", got)
	}
	ctl("ssf", "streams", "disable", st.ID, "--reason", "contract ended", "--by", "alice")
	var resumed api.SSFStreamView
	if err := json.Unmarshal([]byte(ctl("--json", "ssf", "streams", "resume", st.ID)), &resumed); err != nil || resumed.Status != "enabled" {
		t.Fatalf("resume --json: %+v, %v", resumed, err)
	}
	if out = ctl("ssf", "streams", "verify", st.ID, "--state", "check-1"); !strings.Contains(out, "verification event ") {
		t.Fatalf("verify printed\n%s", out)
	}
	if out = ctl("ssf", "streams", "delete", poll.ID); !strings.Contains(out, "deleted stream "+poll.ID) {
		t.Fatalf("delete printed\n%s", out)
	}
	if _, err := streams.Get(ctx, poll.ID); err == nil {
		t.Fatal("deleted, but still there")
	}

	// Refusals: tokend's, and usage errors that never need NATS.
	if r := runCtl(t, "", "--nats-url", url, "ssf", "streams", "show", poll.ID); r.code != 1 || !strings.Contains(r.stderr, "not_found") {
		t.Fatalf("show a deleted stream: %+v", r)
	}
	for _, args := range [][]string{
		{"ssf"},
		{"ssf", "frobs", "list"},
		{"ssf", "streams"},
		{"ssf", "streams", "frob"},
		{"ssf", "streams", "list", st.ID},
		{"ssf", "streams", "show"},
		{"ssf", "streams", "pause", st.ID},
		{"ssf", "streams", "disable", st.ID},
		{"ssf", "streams", "resume", st.ID, "--reason", "x"},
		{"ssf", "streams", "show", st.ID, "--state", "x"},
		{"ssf", "streams", "show", st.ID, "--by", "alice"},
		{"ssf", "streams", "pause", st.ID, "--reason", "x", "--by", ""},
		{"ssf", "webhooks", "add"},
		{"ssf", "webhooks", "add", "--url", "https://siem.example", "--grace", "1h"},
		{"ssf", "webhooks", "list", "--save", "f"},
		{"ssf", "webhooks", "remove"},
		{"ssf", "streams", "list", "x", "y"},
	} {
		if r := runCtl(t, "", append([]string{"--nats-url", deadURL}, args...)...); r.code != 2 {
			t.Errorf("tokenctl %q: exit %d, want 2\n%s", args, r.code, r.stderr)
		}
	}
}

func TestSSFWebhooks(t *testing.T) {
	url, streams := startSSF(t)
	asUser(t, "dana")
	ctx := context.Background()
	ctl := func(args ...string) string { return mustCtl(t, append([]string{"--nats-url", url}, args...)...) }

	out := ctl("ssf", "webhooks", "add", "--url", "https://siem.example/hook", "--event", "family.revoked", "--event", "key-revoked",
		"--client", "web-app", "--description", "SIEM")
	m := webhookSecretLine.FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "added webhook ") || !strings.Contains(out, "clients:          web-app") {
		t.Fatalf("add printed\n%s", out)
	}
	secret := m[1]
	list, err := streams.ListAll(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("%d streams, %v", len(list), err)
	}
	wh := list[0]
	if wh.CreatedBy != "dana" || !slices.Equal(wh.EventsRequested, []string{signals.TypeSessionRevoked, signals.TypeKeyRevoked}) ||
		!slices.Equal(wh.Clients, []string{"web-app"}) || wh.Description != "SIEM" {
		t.Fatalf("stored %+v", wh)
	}
	if sec, err := streams.DeliverySecrets(wh); err != nil || !slices.Equal(sec.Webhook, []string{secret}) {
		t.Fatalf("the secret tokend holds: %v", err)
	}
	if out = ctl("ssf", "webhooks", "list"); !regexp.MustCompile(wh.ID + `\s+operator dana\s+webhook\s+enabled\s+https://siem.example/hook\s+2\s`).MatchString(out) {
		t.Fatalf("list printed\n%s", out)
	}

	// rotate-secret --save: the new secret goes to the file only; the old
	// one signs too for --grace.
	file := filepath.Join(t.TempDir(), "siem.secret")
	out = ctl("ssf", "webhooks", "rotate-secret", wh.ID, "--grace", "1h", "--save", file)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	next := strings.TrimSpace(string(data))
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o600 {
		t.Fatalf("--save wrote mode %v", st.Mode().Perm())
	}
	if strings.Contains(out, next) || !strings.Contains(out, "secret: written to "+file) || !strings.Contains(out, "signs until") {
		t.Fatalf("rotate-secret --save printed\n%s", out)
	}
	wh, _ = streams.Get(ctx, wh.ID)
	if sec, err := streams.DeliverySecrets(wh); err != nil || !slices.Equal(sec.Webhook, []string{next, secret}) {
		t.Fatalf("after the rotation: %v", err)
	}
	if r := runCtl(t, "", "--nats-url", url, "ssf", "webhooks", "rotate-secret", wh.ID, "--save", file); r.code != 2 {
		t.Fatalf("--save over an existing file: %+v", r)
	}

	// --json: the reply as received, with the secret first.
	var added struct {
		Secret string `json:"secret"`
		api.SSFStreamView
	}
	if err := json.Unmarshal([]byte(ctl("--json", "ssf", "webhooks", "add", "--url", "https://siem2.example/hook")), &added); err != nil {
		t.Fatal(err)
	}
	hook2, err := streams.Get(ctx, added.StreamID)
	if err != nil || added.DeliveryMethod != signals.DeliveryWebhook || added.EventsRequested != nil {
		t.Fatalf("add --json: %+v, %v", added, err)
	}
	if sec, err := streams.DeliverySecrets(hook2); err != nil || !slices.Equal(sec.Webhook, []string{added.Secret}) {
		t.Fatalf("add --json: the secret printed is not tokend's: %v", err)
	}

	if r := runCtl(t, "", "--nats-url", url, "ssf", "webhooks", "add", "--url", "https://siem.example", "--event", "token.issued"); r.code != 1 ||
		!strings.Contains(r.stderr, "invalid_request") || webhookSecretLine.MatchString(r.stdout) {
		t.Fatalf("an unknown event type: %+v", r)
	}
	ctl("ssf", "webhooks", "remove", wh.ID)
	if _, err := streams.Get(ctx, wh.ID); err == nil {
		t.Fatal("removed, but still there")
	}
}
