package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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
	return startLoggingInstance(t, url, io.Discard)
}

// startLoggingInstance is startInstance logging to logs, with metrics,
// configured by configure before it starts.
func startLoggingInstance(t *testing.T, url string, logs io.Writer, configure ...func(*Service)) *Service {
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
	s := &Service{Tokens: cmds, Access: access, Log: slog.New(slog.NewTextHandler(logs, nil)), Now: time.Now,
		Metrics: NewMetrics(prometheus.NewRegistry()), Outbox: events.NewStore(nc, js, stream, subjects)}
	for _, f := range configure {
		f(s)
	}
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
	if staged.Revision <= initial.Revision || stateOf(staged, "mac", "next") == "" || stateOf(staged, "signing", "next") == "" ||
		stateOf(staged, "set", "next") == "" {
		t.Fatalf("stage reply %s", m.Data)
	}
	for _, secret := range []string{"secret", "seed", "pkcs8"} {
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
		if len(set.Key(stateOf(staged, "signing", "next"))) != 1 || len(set.Key(stateOf(staged, "set", "next"))) != 1 {
			t.Fatalf("a staged key is not in the JWKS %s", s.Access.JWKS())
		}
	}

	_, m = adminRequest(t, nc, SubjectKeysPromote, `{"revision":1}`)
	if m.Header.Get(micro.ErrorCodeHeader) != "400" || !strings.Contains(string(m.Data), `"error":"invalid_request"`) {
		t.Fatalf("promoting a stale revision: %q %v", m.Data, m.Header)
	}
	promoted, m := adminRequest(t, nc, SubjectKeysPromote, fmt.Sprintf(`{"revision":%d}`, staged.Revision))
	if stateOf(promoted, "mac", "current") != stateOf(staged, "mac", "next") || stateOf(promoted, "mac", "retired") != oldMAC ||
		stateOf(promoted, "signing", "retired") != oldSigning || stateOf(promoted, "set", "current") != stateOf(staged, "set", "next") ||
		stateOf(promoted, "set", "retired") != stateOf(initial, "set", "current") {
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

// lockedBuffer is a log both instances write to.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func keysRevoked(t *testing.T, s *Service, kind string) float64 {
	t.Helper()
	var m dto.Metric
	if err := s.Metrics.keysRevoked.WithLabelValues(kind).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestKeysAdminRevoke: a revoked signing key leaves every instance's JWKS
// and stops verifying access tokens at once; a revoked current key is
// replaced in the same change; the revocation is logged and counted.
func TestKeysAdminRevoke(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	logs := &lockedBuffer{}
	a, b := startLoggingInstance(t, url, logs), startLoggingInstance(t, url, logs)
	nc := eventstest.MustConnect(t, url)
	grant := tokens.Grant{Family: domain.Family{ID: "fam", Subject: "u", ClientID: "c"}}
	signed, _ := a.Access.Mint(grant, time.Now())
	compromised := jwtHeader(t, signed)
	for _, s := range []*Service{a, b} {
		if _, err := s.Access.Verify(signed, time.Now()); err != nil {
			t.Fatal(err)
		}
	}

	revoke := func(body string) (KeysRevoked, *nats.Msg) {
		t.Helper()
		m, err := nc.Request("tokens."+SubjectKeysRevoke, []byte(body), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var r KeysRevoked
		if m.Header.Get(micro.ErrorCodeHeader) == "" {
			if err := json.Unmarshal(m.Data, &r); err != nil {
				t.Fatal(err)
			}
		}
		return r, m
	}
	for body, want := range map[string]string{
		`{"kid":"` + compromised + `","by":"alice"}`:                                 `"error":"invalid_request","error_description":"reason is required"`,
		`{"kid":"` + compromised + `","reason":"leaked"}`:                            `"error":"invalid_request","error_description":"by is required`,
		`{"reason":"leaked","by":"alice"}`:                                           `"error":"invalid_request","error_description":"kid is required`,
		`{"kid":"nobody","reason":"leaked","by":"alice"}`:                            `"error":"not_found"`,
		`{"kid":"` + compromised + `","reason":"leaked","by":"alice","revision":99}`: `"error":"invalid_request","error_description":"the keyset is at revision`,
	} {
		if _, m := revoke(body); m.Header.Get(micro.ErrorCodeHeader) == "" || !strings.Contains(string(m.Data), want) {
			t.Errorf("%s: %q, want %s", body, m.Data, want)
		}
	}
	if keysRevoked(t, a, "signing")+keysRevoked(t, b, "signing") != 0 {
		t.Fatal("refused revocations were counted")
	}

	r, m := revoke(`{"kid":"` + compromised + `","reason":"seed found in a paste","by":"alice"}`)
	if r.Revoked.Kid != compromised || r.Revoked.Kind != "signing" || r.Revoked.State != "current" || !r.Generated ||
		r.Replacement == nil || r.Replacement.Kid != stateOf(r.KeysStatus, "signing", "current") || r.Replacement.PromotedAt == "" ||
		slices.ContainsFunc(r.Keys, func(k KeyView) bool { return k.Kid == compromised }) {
		t.Fatalf("revoke reply %s", m.Data)
	}
	for _, secret := range []string{"secret", "seed\""} {
		if strings.Contains(string(m.Data), secret) {
			t.Fatalf("the revoke reply shows key material: %s", m.Data)
		}
	}
	awaitAll(t, nc, r.Revision)
	for _, s := range []*Service{a, b} {
		if _, err := s.Access.Verify(signed, time.Now()); err == nil {
			t.Fatal("an access token of the revoked key still verifies")
		}
		if strings.Contains(string(s.Access.JWKS()), compromised) {
			t.Fatalf("the JWKS still holds the revoked key: %s", s.Access.JWKS())
		}
		tok, _ := s.Access.Mint(grant, time.Now())
		if jwtHeader(t, tok) != r.Replacement.Kid {
			t.Fatalf("signed with %s after the revocation, want %s", jwtHeader(t, tok), r.Replacement.Kid)
		}
		verify(t, s.Access.JWKS(), tok)
	}
	if n := keysRevoked(t, a, "signing") + keysRevoked(t, b, "signing"); n != 1 || keysRevoked(t, a, "mac")+keysRevoked(t, b, "mac") != 0 {
		t.Fatalf("tokend_keys_revoked_total{kind=signing} is %v", n)
	}
	lines := strings.Split(logs.String(), "\n")
	line := lines[slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, `msg="key revoked"`) })]
	for _, want := range []string{"level=WARN", "kid=" + compromised, "kind=signing", "state=current", `reason="seed found in a paste"`,
		"by=alice", "current=" + r.Replacement.Kid, "generated=true"} {
		if !strings.Contains(line, want) {
			t.Errorf("the log line lacks %s: %s", want, line)
		}
	}

	// A staged key takes over from a revoked current one; the NATS user
	// stands for by.
	staged, _ := adminRequest(t, nc, SubjectKeysStage, `{}`)
	mac, nextMAC := stateOf(staged, "mac", "current"), stateOf(staged, "mac", "next")
	msg := nats.NewMsg("tokens." + SubjectKeysRevoke)
	msg.Data = []byte(`{"kid":"` + mac + `","reason":"host lost"}`)
	msg.Header = nats.Header{"Nats-Request-Info": []string{`{"user":"ops-admin"}`}}
	m, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var byStaged KeysRevoked
	if err := json.Unmarshal(m.Data, &byStaged); err != nil || byStaged.Generated || byStaged.Replacement == nil || byStaged.Replacement.Kid != nextMAC {
		t.Fatalf("revoking the current MAC key with one staged: %s", m.Data)
	}
	if !strings.Contains(logs.String(), "nats_user=ops-admin") {
		t.Fatalf("the NATS user is not logged:\n%s", logs.String())
	}

	// A SET key: it leaves the JWKS, and SETs are signed with the staged
	// key in its place.
	setKey, nextSET := stateOf(byStaged.KeysStatus, "set", "current"), stateOf(byStaged.KeysStatus, "set", "next")
	bySET, m := revoke(`{"kid":"` + setKey + `","reason":"private key in a core dump","by":"alice"}`)
	if bySET.Revoked.Kind != "set" || bySET.Revoked.Kid != setKey || bySET.Replacement == nil || bySET.Replacement.Kid != nextSET || bySET.Generated {
		t.Fatalf("revoking the current SET key with one staged: %s", m.Data)
	}
	awaitAll(t, nc, bySET.Revision)
	for _, s := range []*Service{a, b} {
		if kid, _, err := s.Tokens.Keyring().Loaded().SETSigner(); err != nil || kid != nextSET {
			t.Fatalf("signs SETs with %s after the revocation, want %s: %v", kid, nextSET, err)
		}
		if jwks := string(s.Access.JWKS()); strings.Contains(jwks, setKey) || !strings.Contains(jwks, nextSET) {
			t.Fatalf("the JWKS after the SET key's revocation: %s", jwks)
		}
	}
	if n := keysRevoked(t, a, "set") + keysRevoked(t, b, "set"); n != 1 {
		t.Fatalf("tokend_keys_revoked_total{kind=set} is %v", n)
	}
}
