//go:build reliability

// The SSF crash test kills the tokend process that pushes a stream with
// SIGKILL while its receiver is slow; a second tokend on the same
// JetStream takes the stream over. It takes about 40 s (the in-flight
// message comes back after the consumer's AckWait, 30 s):
//
//	go test -tags reliability -race -count=1 -run TestCrashSSFPush -v ./cmd/tokend
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/signals"
)

// startJoined runs bin joined to the NATS server at natsURL and waits
// until it is ready.
func startJoined(t *testing.T, bin, natsURL string) *tokendProcess {
	t.Helper()
	return runTokend(t, bin, natsURL, freeAddr(t), []string{"--data-dir", t.TempDir(), "--nats-url", natsURL, "--issuer", "https://tokend.example"})
}

// slowReceiver records the jti of every SET as it arrives (duplicates
// included), and takes it after a pause.
type slowReceiver struct {
	srv   *httptest.Server
	delay time.Duration
	mu    sync.Mutex
	jtis  []string
}

func (rc *slowReceiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	tok, err := jwt.ParseSigned(string(body), []jose.SignatureAlgorithm{jose.RS256})
	var c jwt.Claims
	if err != nil || tok.UnsafeClaimsWithoutVerification(&c) != nil {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"err":"invalid_request","description":"not a SET"}`)
		return
	}
	rc.mu.Lock()
	rc.jtis = append(rc.jtis, c.ID)
	delay := rc.delay
	rc.mu.Unlock()
	time.Sleep(delay)
	w.WriteHeader(http.StatusAccepted)
}

func (rc *slowReceiver) got() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.jtis...)
}

// TestCrashSSFPushKill9: every event reaches the receiver although the
// instance pushing the stream dies mid-delivery; what came twice has the
// same jti; the other instance delivers the rest.
func TestCrashSSFPushKill9(t *testing.T) {
	const families = 20
	bin := buildTokend(t)
	natsURL := eventstest.MustJetStream(t).ClientURL()
	nc := eventstest.MustConnect(t, natsURL)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	rc := &slowReceiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	first := startJoined(t, bin, natsURL)
	clients, err := registry.Open(ctx, js, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer clients.Stop()
	siem := domain.Client{ID: "siem", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, Receiver: domain.ReceiverAll,
		Scopes: []string{}, Audiences: []string{}}
	if _, err := clients.Put(ctx, siem, domain.HashClientSecret("siem-secret"), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	streams, err := signals.Open(ctx, js, signals.Options{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer streams.Stop()
	st, err := streams.Create(ctx, signals.NewStream{Receiver: "siem", Request: signals.StreamRequest{
		Delivery: &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: rc.srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}

	// The first instance alone: it is pinned to the stream.
	revoke := func(nc *nats.Conn) string {
		issued := mustIssue(t, nc, "user-1", "web")
		if r := call(t, nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &issued.FamilyID}); r.errCode != "" {
			t.Fatalf("revoke: %s", r.raw)
		}
		for _, ev := range familyEvents(t, nc, issued.FamilyID) {
			if ev.Type == string(domain.FamilyRevoked) {
				return signals.JTI(st.ID, ev.ID, signals.TypeSessionRevoked)
			}
		}
		t.Fatal("no family.revoked")
		return ""
	}
	want := map[string]bool{revoke(nc): true}
	awaitJTIs(t, rc, want, time.Minute)
	second := startJoined(t, bin, natsURL)

	// A slow receiver, events queued behind it, and the pushing
	// instance killed mid-delivery.
	rc.mu.Lock()
	rc.delay = 300 * time.Millisecond
	rc.mu.Unlock()
	for range families {
		want[revoke(nc)] = true
	}
	eventstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if n := len(rc.got()); n < 5 {
			return fmt.Errorf("%d SETs so far", n)
		}
		return nil
	})
	first.kill(t)
	killedAt := len(rc.got())

	awaitJTIs(t, rc, want, 2*time.Minute)
	got := rc.got()
	seen := map[string]int{}
	for _, jti := range got {
		if !want[jti] {
			t.Errorf("a SET no event asked for: %s", jti)
		}
		seen[jti]++
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("%d events; %d SETs before the kill, %d after it (from the second instance); %d delivered twice, told apart by their jti",
		len(want), killedAt, len(got)-killedAt, dups)
	if len(got) == killedAt {
		t.Error("nothing was delivered after the kill")
	}
	second.stop(t)
	wantCleanLogs(t, second.logs.String())
}

// awaitJTIs waits until the receiver got every jti of want.
func awaitJTIs(t *testing.T, rc *slowReceiver, want map[string]bool, within time.Duration) {
	t.Helper()
	eventstest.CheckFor(t, within, 50*time.Millisecond, func() error {
		have := map[string]bool{}
		for _, jti := range rc.got() {
			have[jti] = true
		}
		missing := 0
		for jti := range want {
			if !have[jti] {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d events not delivered", missing, len(want))
		}
		return nil
	})
}
