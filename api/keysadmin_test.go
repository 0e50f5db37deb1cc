package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/tokens"
)

// startInstance runs the NATS face of one tokend instance with its own
// keyring on the shared JetStream server at url.
func startInstance(t *testing.T, url string) *Service {
	t.Helper()
	ctx := context.Background()
	nc := eventstest.MustConnect(t, url)
	js, _ := jetstream.New(nc)
	subjects := events.Subjects{Prefix: "tokens"}
	stream, err := events.Setup(ctx, js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	life := keys.Lifetimes{Refresh: time.Hour, Access: 5 * time.Minute}
	ring, err := keys.OpenKeyring(ctx, js, 1, life, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	access, err := NewAccessTokens(ring.Loaded().Keys, "https://tokend.example", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := access.Follow(ring); err != nil {
		t.Fatal(err)
	}
	cmds := tokens.NewService(events.NewWriter(events.NewStore(nc, js, stream, subjects), 64), ring.Codec(),
		domain.Policy{ReuseInterval: time.Minute, IdleTTL: time.Hour, AbsoluteTTL: time.Hour}, time.Now)
	cmds.UseKeyring(ring)
	s := &Service{Tokens: cmds, Access: access, Log: slog.New(slog.DiscardHandler), Now: time.Now}
	if err := s.Start(nc, "tokens"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// gatherReplies publishes data to subject and returns the replies once n
// have come.
func gatherReplies(t *testing.T, nc *nats.Conn, subject string, data []byte, n int) []*nats.Msg {
	t.Helper()
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, data); err != nil {
		t.Fatal(err)
	}
	var out []*nats.Msg
	for len(out) < n {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("%s: %d replies of %d: %v", subject, len(out), n, err)
		}
		out = append(out, m)
	}
	return out
}

func statuses(t *testing.T, nc *nats.Conn) map[string]KeysStatus {
	t.Helper()
	out := map[string]KeysStatus{}
	for _, m := range gatherReplies(t, nc, "tokens."+SubjectKeysStatus, []byte(`{}`), 2) {
		var st KeysStatus
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
		out[st.InstanceID] = st
	}
	return out
}

// awaitAll waits until both instances report revision rev.
func awaitAll(t *testing.T, nc *nats.Conn, rev uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		behind := 0
		for _, st := range statuses(t, nc) {
			if st.Revision != rev {
				behind++
			}
		}
		if behind == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d instance(s) not at revision %d", behind, rev)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func adminRequest(t *testing.T, nc *nats.Conn, what string, body string) (KeysStatus, *nats.Msg) {
	t.Helper()
	m, err := nc.Request("tokens."+what, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st KeysStatus
	if m.Header.Get(micro.ErrorCodeHeader) == "" {
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
	}
	return st, m
}

func stateOf(st KeysStatus, kind, state string) string {
	i := slices.IndexFunc(st.Keys, func(k KeyView) bool { return k.Kind == kind && k.State == state })
	if i < 0 {
		return ""
	}
	return st.Keys[i].Kid
}

// verify checks an access token against a JWKS as a resource server would.
func verify(t *testing.T, jwks []byte, token string) {
	t.Helper()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	keys := set.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 {
		t.Fatalf("the JWKS has no key %s", tok.Headers[0].KeyID)
	}
	var c jwt.Claims
	if err := tok.Claims(keys[0].Key, &c); err != nil {
		t.Fatal(err)
	}
}

func TestKeysAdminStageAndPromote(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	a, b := startInstance(t, url), startInstance(t, url)
	nc := eventstest.MustConnect(t, url)

	// Every instance answers status, with the id service discovery knows it by.
	before := statuses(t, nc)
	var pinged []string
	for _, m := range gatherReplies(t, nc, "$SRV.PING.tokens", nil, 2) {
		var p micro.Ping
		json.Unmarshal(m.Data, &p)
		pinged = append(pinged, p.ID)
	}
	for _, id := range pinged {
		if _, ok := before[id]; !ok {
			t.Fatalf("instance %s answers ping but not status (statuses %v)", id, before)
		}
	}
	initial := before[pinged[0]]
	oldMAC, oldSigning := stateOf(initial, "mac", "current"), stateOf(initial, "signing", "current")
	grant := tokens.Grant{Family: domain.Family{ID: "fam", Subject: "u", ClientID: "c"}}
	signedBefore, _ := a.Access.Mint(grant, time.Now())

	_, m := adminRequest(t, nc, SubjectKeysStage, `{"bogus":1}`)
	if m.Header.Get(micro.ErrorCodeHeader) != "400" || !strings.Contains(string(m.Data), `"error":"invalid_request"`) {
		t.Fatalf("malformed stage request: %q %v", m.Data, m.Header)
	}
	staged, m := adminRequest(t, nc, SubjectKeysStage, `{}`)
	if staged.Revision <= initial.Revision || stateOf(staged, "mac", "next") == "" || stateOf(staged, "signing", "next") == "" {
		t.Fatalf("stage reply %s", m.Data)
	}
	for _, secret := range []string{"secret", "seed"} {
		if strings.Contains(string(m.Data), secret) {
			t.Fatalf("the stage reply shows key material: %s", m.Data)
		}
	}
	awaitAll(t, nc, staged.Revision)
	// Staged: published, but nothing is signed with it.
	for _, s := range []*Service{a, b} {
		tok, _ := s.Access.Mint(grant, time.Now())
		if h := jwtHeader(t, tok); h != oldSigning {
			t.Fatalf("signed with %s while %s is only staged", h, stateOf(staged, "signing", "next"))
		}
		var set jose.JSONWebKeySet
		json.Unmarshal(s.Access.JWKS(), &set)
		if len(set.Key(stateOf(staged, "signing", "next"))) != 1 {
			t.Fatalf("the staged key is not in the JWKS %s", s.Access.JWKS())
		}
	}

	_, m = adminRequest(t, nc, SubjectKeysPromote, `{"revision":1}`)
	if m.Header.Get(micro.ErrorCodeHeader) != "400" || !strings.Contains(string(m.Data), `"error":"invalid_request"`) {
		t.Fatalf("promoting a stale revision: %q %v", m.Data, m.Header)
	}
	promoted, m := adminRequest(t, nc, SubjectKeysPromote, fmt.Sprintf(`{"revision":%d}`, staged.Revision))
	if stateOf(promoted, "mac", "current") != stateOf(staged, "mac", "next") || stateOf(promoted, "mac", "retired") != oldMAC ||
		stateOf(promoted, "signing", "retired") != oldSigning {
		t.Fatalf("promote reply %s", m.Data)
	}
	if i := slices.IndexFunc(promoted.Keys, func(k KeyView) bool { return k.State == "retired" }); promoted.Keys[i].ExpiresAt == "" {
		t.Fatalf("a retired key without expiry: %s", m.Data)
	}
	awaitAll(t, nc, promoted.Revision)
	for _, s := range []*Service{a, b} {
		tok, _ := s.Access.Mint(grant, time.Now())
		if h := jwtHeader(t, tok); h != stateOf(promoted, "signing", "current") {
			t.Fatalf("signed with %s after the promotion", h)
		}
		verify(t, s.Access.JWKS(), tok)
		verify(t, s.Access.JWKS(), signedBefore)
		if tok := s.Tokens.Keyring().Codec().Mint("f", 1, [32]byte{}); tok.KeyID != stateOf(promoted, "mac", "current") {
			t.Fatalf("refresh token minted under %s after the promotion", tok.KeyID)
		}
	}
	_, m = adminRequest(t, nc, SubjectKeysPromote, `{}`)
	if !strings.Contains(string(m.Data), "no key is staged") {
		t.Fatalf("promoting with nothing staged: %s", m.Data)
	}
}

func jwtHeader(t *testing.T, token string) string {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Headers[0].KeyID
}
