package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/tokens"
)

// adminAccessTTL is the --access-ttl of the instances startClientsAdmin runs.
const adminAccessTTL = 5 * time.Minute

// startClientsAdmin runs the NATS face of one instance with a client
// registry on the JetStream server at url; it serves nothing that would
// need the event stream.
func startClientsAdmin(t *testing.T, url string) *registry.Registry {
	t.Helper()
	ctx := context.Background()
	nc := eventstest.MustConnect(t, url)
	js, _ := jetstream.New(nc)
	reg, err := registry.Open(ctx, js, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	codec, err := keys.NewKeyset(time.Now()).Codec()
	if err != nil {
		t.Fatal(err)
	}
	access, err := NewAccessTokens(keys.NewKeyset(time.Now()), "https://tokend.example", adminAccessTTL)
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{Tokens: tokens.NewService(nil, codec, domain.Policy{}, time.Now), Clients: reg, Access: access,
		Log: slog.New(slog.DiscardHandler), Now: time.Now}
	if err := s.Start(nc, "tokens"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return reg
}

// clientsCall sends a client administration request and returns the raw
// reply, decoded into out unless it is an error; code is the contract
// error code ("" on success), checked against the micro headers.
func clientsCall(t *testing.T, nc *nats.Conn, subject string, header nats.Header, body string, out any) (raw string, code string) {
	t.Helper()
	msg := nats.NewMsg("tokens." + subject)
	msg.Data, msg.Header = []byte(body), header
	m, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	if status := m.Header.Get(micro.ErrorCodeHeader); status != "" {
		var e struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(m.Data, &e); err != nil || e.Error != m.Header.Get(micro.ErrorHeader) || status != fmt.Sprint(httpStatus(e.Error)) {
			t.Fatalf("%s: error reply %q with headers %v", subject, m.Data, m.Header)
		}
		return string(m.Data), e.Error
	}
	if out != nil {
		if err := json.Unmarshal(m.Data, out); err != nil {
			t.Fatalf("%s: %q: %v", subject, m.Data, err)
		}
	}
	return string(m.Data), ""
}

func wantClientsError(t *testing.T, raw, code, gotCode, mentions string) {
	t.Helper()
	if gotCode != code || !strings.Contains(raw, mentions) {
		t.Fatalf("want %s mentioning %q, got %s", code, mentions, raw)
	}
}

const adminJWKS = `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","use":"sig","kid":"k1"}]}`

func TestClientsAdmin(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	_, other := startClientsAdmin(t, url), startClientsAdmin(t, url)
	nc := eventstest.MustConnect(t, url)
	secret := "a-256-bit-secret-made-by-tokenctl-never-sent"
	hash := domain.HashClientSecret(secret)
	var replies []string
	call := func(subject, body string, out any) (string, string) {
		t.Helper()
		raw, code := clientsCall(t, nc, subject, nil, body, out)
		replies = append(replies, raw)
		return raw, code
	}

	raw, code := call(SubjectClientsPut, `{"client_id":"web","type":"confidential","scopes":[],"audiences":[],"secret_sha256":"`+hash+`","by":"alice","bogus":1}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "bogus")
	raw, code = call(SubjectClientsPut, `{"client_id":"web","type":"confidential","audiences":[],"secret_sha256":"`+hash+`","by":"alice"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "scopes is required")
	raw, code = call(SubjectClientsPut, `{"client_id":"web","type":"confidential","scopes":[],"audiences":[],"secret_sha256":"`+hash+`"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "by is required")
	raw, code = call(SubjectClientsPut, `{"client_id":"web","type":"confidential","scopes":[],"audiences":[],"secret_sha256":"`+hash+`","by":"alice","access_ttl":"soon"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "access_ttl")

	var created ClientChangeView
	if raw, code = call(SubjectClientsPut, `{"client_id":"web","type":"confidential","scopes":["openid","api:read"],"audiences":["https://api.example.com"],`+
		`"access_ttl":"2m","secret_sha256":"`+hash+`","by":"alice"}`, &created); code != "" {
		t.Fatal(raw)
	}
	c := created.Client
	if created.Action != "create" || created.By != "alice" || created.At == "" || c == nil || c.AuthMethod != "client_secret_basic" || c.OnReplay != "revoke_family" ||
		c.AccessTTL != "2m0s" || c.RefreshIdleTTL != "0s" || len(c.Secrets) != 1 || c.Secrets[0].ExpiresAt != "" || c.Revision != created.Revision {
		t.Fatalf("create reply %s", raw)
	}
	// The registry of every instance has it, whichever answered.
	eventstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if c, ok := other.Lookup("web"); !ok || !c.VerifySecret(secret, time.Now()) {
			return errors.New("the other instance does not know the client yet")
		}
		return nil
	})
	raw, code = call(SubjectClientsPut, `{"client_id":"web","type":"public","scopes":[],"audiences":[],"by":"alice"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "is registered")

	var updated ClientChangeView
	update := fmt.Sprintf(`{"client_id":"web","type":"confidential","auth_method":"client_secret_post","scopes":["openid"],"audiences":[],"revision":%d,"by":"bob"}`, created.Revision)
	if raw, code = call(SubjectClientsPut, update, &updated); code != "" || updated.Action != "update" || updated.Client.AuthMethod != "client_secret_post" ||
		len(updated.Client.Secrets) != 1 || updated.Client.AccessTTL != "0s" || updated.Client.CreatedAt != c.CreatedAt {
		t.Fatalf("update reply %s", raw)
	}
	raw, code = call(SubjectClientsPut, update, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, fmt.Sprintf("at revision %d, not %d", updated.Revision, created.Revision))

	raw, code = call(SubjectClientsRotateSecret, `{"client_id":"web","secret_sha256":"`+domain.HashClientSecret("next")+`","grace":"soon","by":"alice"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "grace")
	var rotated ClientChangeView
	if raw, code = call(SubjectClientsRotateSecret, `{"client_id":"web","secret_sha256":"`+domain.HashClientSecret("next")+`","grace":"1h","by":"alice"}`, &rotated); code != "" {
		t.Fatal(raw)
	}
	at, _ := time.Parse(time.RFC3339, rotated.At)
	if s := rotated.Client.Secrets; rotated.Action != "rotate_secret" || len(s) != 2 || s[0].ExpiresAt != at.Add(time.Hour).Format(time.RFC3339) || s[1].ExpiresAt != "" {
		t.Fatalf("rotate reply %s", raw)
	}
	var byDefault ClientChangeView
	if raw, code = call(SubjectClientsRotateSecret, `{"client_id":"web","secret_sha256":"`+domain.HashClientSecret("third")+`","by":"alice"}`, &byDefault); code != "" {
		t.Fatal(raw)
	}
	at, _ = time.Parse(time.RFC3339, byDefault.At)
	if s := byDefault.Client.Secrets; len(s) != 3 || s[1].ExpiresAt != at.Add(domain.DefaultSecretGrace).Format(time.RFC3339) {
		t.Fatalf("rotate without grace: %s", raw)
	}
	raw, code = call(SubjectClientsRotateSecret, `{"client_id":"nobody","secret_sha256":"`+hash+`","by":"alice"}`, nil)
	wantClientsError(t, raw, domain.ENotFound, code, "not registered")

	var jwt ClientChangeView
	if raw, code = call(SubjectClientsPut, `{"client_id":"api-robot","type":"confidential","auth_method":"private_key_jwt","jwks":`+adminJWKS+
		`,"scopes":["api:write"],"audiences":[],"by":"alice"}`, &jwt); code != "" || jwt.Client.JWKSKeys != 1 || !strings.Contains(string(jwt.Client.JWKS), `"kid":"k1"`) {
		t.Fatalf("private_key_jwt client: %s", raw)
	}
	raw, code = call(SubjectClientsPut, `{"client_id":"leaky","type":"confidential","auth_method":"private_key_jwt","jwks":{"keys":[{"kty":"EC","d":"private"}]},`+
		`"scopes":[],"audiences":[],"by":"alice"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "private key material")

	var list ClientList
	if raw, code = call(SubjectClientsList, `{}`, &list); code != "" || len(list.Clients) != 2 || list.Clients[0].ClientID != "api-robot" ||
		list.Clients[0].JWKS != nil || list.Clients[0].JWKSKeys != 1 || len(list.Clients[1].Secrets) != 3 {
		t.Fatalf("list %s", raw)
	}
	var got ClientView
	if raw, code = call(SubjectClientsGet, `{"client_id":"api-robot"}`, &got); code != "" || got.JWKS == nil || got.Revision != jwt.Revision {
		t.Fatalf("get %s", raw)
	}

	var removed ClientChangeView
	if raw, code = call(SubjectClientsRemove, `{"client_id":"web","revision":1,"by":"alice"}`, nil); code != domain.EInvalidRequest {
		t.Fatalf("remove at a stale revision: %s", raw)
	}
	if raw, code = call(SubjectClientsRemove, `{"client_id":"web","by":"carol"}`, &removed); code != "" || removed.Action != "remove" || removed.Client != nil || !strings.Contains(raw, `"client":null`) {
		t.Fatalf("remove %s", raw)
	}
	raw, code = call(SubjectClientsGet, `{"client_id":"web"}`, nil)
	wantClientsError(t, raw, domain.ENotFound, code, "not registered")
	raw, code = call(SubjectClientsGet, `{"client_id":""}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "client_id")

	var history ClientHistory
	if raw, code = call(SubjectClientsHistory, `{"client_id":"web"}`, &history); code != "" {
		t.Fatal(raw)
	}
	var actions []string
	for _, ch := range history.Changes {
		actions = append(actions, ch.Action+"/"+ch.By)
	}
	if strings.Join(actions, " ") != "create/alice update/bob rotate_secret/alice rotate_secret/alice remove/carol" || history.ClientID != "web" {
		t.Fatalf("history %s", raw)
	}
	raw, code = call(SubjectClientsHistory, `{"client_id":"never"}`, nil)
	wantClientsError(t, raw, domain.ENotFound, code, "not registered")

	for _, r := range replies {
		for _, h := range []string{hash, domain.HashClientSecret("next"), domain.HashClientSecret("third"), secret} {
			if strings.Contains(r, h) {
				t.Fatalf("a reply shows a secret hash: %s", r)
			}
		}
	}
}

// TestClientsAdminNATSUser: the user the NATS server names in
// Nats-Request-Info is recorded as who made the change.
func TestClientsAdminNATSUser(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	startClientsAdmin(t, url)
	nc := eventstest.MustConnect(t, url)
	header := nats.Header{"Nats-Request-Info": []string{`{"acc":"ADMINS","user":"UADMIN"}`}}
	var created ClientChangeView
	if raw, code := clientsCall(t, nc, SubjectClientsPut, header, `{"client_id":"spa","type":"public","scopes":["openid"],"audiences":[]}`, &created); code != "" ||
		created.NATSUser != "UADMIN" || created.By != "" {
		t.Fatalf("put as a known NATS user: %s", raw)
	}
	var removed ClientChangeView
	if raw, code := clientsCall(t, nc, SubjectClientsRemove, header, `{"client_id":"spa","by":"dave"}`, &removed); code != "" ||
		removed.NATSUser != "UADMIN" || removed.By != "dave" {
		t.Fatalf("remove as a known NATS user: %s", raw)
	}
}

// TestClientsAdminNeedsARegistry: without a registry, nothing answers the
// client administration subjects.
func TestClientsAdminNeedsARegistry(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	startInstance(t, url)
	nc := eventstest.MustConnect(t, url)
	if _, err := nc.Request("tokens."+SubjectClientsList, []byte(`{}`), 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("client administration without a registry: %v", err)
	}
}

// TestClientsAdminReceiver: ssf_receiver is set, shown, kept by get and
// list, dropped by an update without it, and refused for a public client.
func TestClientsAdminReceiver(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	reg := startClientsAdmin(t, url)
	nc := eventstest.MustConnect(t, url)
	hash := domain.HashClientSecret("a-256-bit-secret-made-by-tokenctl-never-sent")
	var created ClientChangeView
	raw, code := clientsCall(t, nc, SubjectClientsPut, nil, `{"client_id":"siem","type":"confidential","scopes":[],"audiences":[],`+
		`"ssf_receiver":"all","secret_sha256":"`+hash+`","by":"alice"}`, &created)
	if code != "" || created.Client.SSFReceiver != "all" {
		t.Fatalf("create: %s", raw)
	}
	if c, ok := reg.Lookup("siem"); !ok || c.Receiver != domain.ReceiverAll {
		t.Fatalf("registered %+v", c)
	}
	var got ClientView
	if raw, code := clientsCall(t, nc, SubjectClientsGet, nil, `{"client_id":"siem"}`, &got); code != "" || got.SSFReceiver != "all" {
		t.Fatalf("get: %s", raw)
	}
	var list ClientList
	if raw, code := clientsCall(t, nc, SubjectClientsList, nil, `{}`, &list); code != "" || len(list.Clients) != 1 || list.Clients[0].SSFReceiver != "all" {
		t.Fatalf("list: %s", raw)
	}
	raw, code = clientsCall(t, nc, SubjectClientsPut, nil, `{"client_id":"siem","type":"confidential","scopes":[],"audiences":[],"ssf_receiver":"some",`+
		fmt.Sprintf(`"revision":%d,"by":"alice"}`, created.Revision), nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "ssf_receiver")
	raw, code = clientsCall(t, nc, SubjectClientsPut, nil, `{"client_id":"spa","type":"public","scopes":[],"audiences":[],"ssf_receiver":"own","by":"alice"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "ssf_receiver goes with confidential clients")
	// An update replaces every setting: without ssf_receiver, no receiver.
	var updated ClientChangeView
	raw, code = clientsCall(t, nc, SubjectClientsPut, nil, fmt.Sprintf(`{"client_id":"siem","type":"confidential","scopes":[],"audiences":[],"revision":%d,"by":"alice"}`,
		created.Revision), &updated)
	if code != "" || updated.Client.SSFReceiver != "" || !strings.Contains(raw, `"ssf_receiver":""`) {
		t.Fatalf("update without the role: %s", raw)
	}
}
