package api

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/tokens"
)

const receiverIssuer = "https://tokend.example"

var receiverNow = time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)

func mustReceiverTokens(t *testing.T, ttl time.Duration) *AccessTokens {
	t.Helper()
	a, err := NewAccessTokens(keys.NewKeyset(receiverNow), receiverIssuer, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

var siem = domain.Client{ID: "siem", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, Receiver: domain.ReceiverAll}

// TestReceiverTokenIsRFC9068 checks a receiver token as a resource server
// would: typ at+jwt, a key of the JWKS, sub = client_id = the receiver,
// aud = the issuer, no sid.
func TestReceiverTokenIsRFC9068(t *testing.T) {
	a := mustReceiverTokens(t, 5*time.Minute)
	raw, ttl, err := a.MintReceiverToken(siem, []string{domain.ScopeSSFRead}, receiverNow)
	if err != nil || ttl != 5*time.Minute {
		t.Fatal(ttl, err)
	}
	var jwks jose.JSONWebKeySet
	json.Unmarshal(a.JWKS(), &jwks)
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	if h := tok.Headers[0]; h.ExtraHeaders[jose.HeaderType] != "at+jwt" || h.KeyID != jwks.Keys[0].KeyID {
		t.Fatalf("header %+v", h)
	}
	var std jwt.Claims
	var all map[string]any
	if err := tok.Claims(jwks.Keys[0].Key, &std, &all); err != nil {
		t.Fatal(err)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Issuer: receiverIssuer, Subject: "siem", AnyAudience: []string{receiverIssuer}, Time: receiverNow}, 0); err != nil {
		t.Fatal(err)
	}
	if !std.Expiry.Time().Equal(receiverNow.Add(5*time.Minute)) || !std.IssuedAt.Time().Equal(receiverNow) || std.ID == "" {
		t.Fatalf("times or jti: %+v", std)
	}
	if _, ok := all["sid"]; ok || all["client_id"] != "siem" || all["scope"] != "ssf.read" {
		t.Fatalf("claims %v", all)
	}
}

// TestReceiverTTL: the client's access_ttl, else --access-ttl, never more
// than either or an hour.
func TestReceiverTTL(t *testing.T) {
	for _, tc := range []struct {
		deployment, client, want time.Duration
	}{
		{5 * time.Minute, 0, 5 * time.Minute},
		{5 * time.Minute, 2 * time.Minute, 2 * time.Minute},
		{5 * time.Minute, 10 * time.Minute, 5 * time.Minute},
		{2 * time.Hour, 0, time.Hour},
		{2 * time.Hour, 90 * time.Minute, time.Hour},
		{2 * time.Hour, 30 * time.Minute, 30 * time.Minute},
	} {
		c := siem
		c.AccessTTL = tc.client
		a := mustReceiverTokens(t, tc.deployment)
		tok, ttl, _ := a.MintReceiverToken(c, domain.ReceiverScopes, receiverNow)
		_, _, late := a.VerifyReceiverToken(tok, receiverNow.Add(tc.want))
		_, _, err := a.VerifyReceiverToken(tok, receiverNow.Add(tc.want-time.Second))
		if ttl != tc.want || err != nil || late == nil {
			t.Errorf("--access-ttl %v, client %v: ttl %v (want %v); a second before: %v; at expiry: %v", tc.deployment, tc.client, ttl, tc.want, err, late)
		}
	}
}

// TestReceiverTokenVerify: VerifyReceiverToken accepts exactly the
// unexpired receiver tokens of this deployment; family access tokens and
// receiver tokens are never taken one for the other.
func TestReceiverTokenVerify(t *testing.T) {
	a := mustReceiverTokens(t, 5*time.Minute)
	tok, _, _ := a.MintReceiverToken(siem, []string{domain.ScopeSSFManage, domain.ScopeSSFRead}, receiverNow)
	id, scope, err := a.VerifyReceiverToken(tok, receiverNow.Add(time.Minute))
	if err != nil || id != "siem" || !slices.Equal(scope, []string{domain.ScopeSSFManage, domain.ScopeSSFRead}) {
		t.Fatalf("VerifyReceiverToken = %q %q %v", id, scope, err)
	}
	if _, err := a.Verify(tok, receiverNow); err == nil {
		t.Fatal("a receiver token verified as a family's access token")
	}

	family := func(audience ...string) string {
		g := tokens.Grant{Family: domain.Family{ID: "fam-1", Subject: "siem", ClientID: "siem"}, Scope: []string{"ssf.read"}, Audience: audience}
		f, err := a.Mint(g, receiverNow)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Verify(f, receiverNow); err != nil {
			t.Fatal(err)
		}
		return f
	}
	claims := func(mod func(*receiverClaims)) receiverClaims {
		c := receiverClaims{Claims: jwt.Claims{Issuer: receiverIssuer, Subject: "siem", Audience: jwt.Audience{receiverIssuer},
			IssuedAt: jwt.NewNumericDate(receiverNow), Expiry: jwt.NewNumericDate(receiverNow.Add(time.Minute)), ID: "j"},
			ClientID: "siem", Scope: "ssf.read"}
		mod(&c)
		return c
	}
	signed := func(c any) string {
		s, err := a.sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if _, _, err := a.VerifyReceiverToken(signed(claims(func(*receiverClaims) {})), receiverNow); err != nil {
		t.Fatalf("the hand-made token the cases below alter: %v", err)
	}
	other := mustReceiverTokens(t, 5*time.Minute)
	foreign, _, _ := other.MintReceiverToken(siem, domain.ReceiverScopes, receiverNow)
	sameKeys, _ := NewAccessTokens(keys.NewKeyset(receiverNow), "https://evil.example", 5*time.Minute)
	sameKeys.signer.Store(a.signer.Load())
	otherIssuer, _, _ := sameKeys.MintReceiverToken(siem, domain.ReceiverScopes, receiverNow)
	for name, bad := range map[string]string{
		"a family's, for an API":       family("https://api.example.com"),
		"a family's, without audience": family(),
		"a family's, for the issuer":   family(receiverIssuer),
		"another deployment's":         foreign,
		"another issuer's":             otherIssuer,
		"tampered":                     tok[:len(tok)-4] + "AAAA",
		"a refresh token":              "rt1.fam.1.k.s.m",
		"with a sid": signed(struct {
			receiverClaims
			SID string `json:"sid"`
		}{claims(func(*receiverClaims) {}), "fam-1"}),
		"with an empty sid": signed(struct {
			receiverClaims
			SID string `json:"sid"`
		}{claims(func(*receiverClaims) {}), ""}),
		"sub is not client_id": signed(claims(func(c *receiverClaims) { c.Subject = "user-42" })),
		"no client_id":         signed(claims(func(c *receiverClaims) { c.ClientID, c.Subject = "", "" })),
		"another audience too": signed(claims(func(c *receiverClaims) { c.Audience = append(c.Audience, "https://api.example.com") })),
		"no scope":             signed(claims(func(c *receiverClaims) { c.Scope = "" })),
		"a scope outside ssf":  signed(claims(func(c *receiverClaims) { c.Scope = "ssf.read openid" })),
		"no exp":               signed(claims(func(c *receiverClaims) { c.Expiry = nil })),
		"no iat":               signed(claims(func(c *receiverClaims) { c.IssuedAt = nil })),
		"issued in the future": signed(claims(func(c *receiverClaims) { c.IssuedAt = jwt.NewNumericDate(receiverNow.Add(2 * time.Minute)) })),
		"expired":              signed(claims(func(c *receiverClaims) { c.Expiry = jwt.NewNumericDate(receiverNow) })),
	} {
		if id, _, err := a.VerifyReceiverToken(bad, receiverNow); err == nil {
			t.Errorf("%s token verified as a receiver's (client %q)", name, id)
		}
	}
	// Another instance's clock may run a little ahead.
	if _, _, err := a.VerifyReceiverToken(signed(claims(func(c *receiverClaims) { c.IssuedAt = jwt.NewNumericDate(receiverNow.Add(30 * time.Second)) })), receiverNow); err != nil {
		t.Fatalf("issued 30s ahead: %v", err)
	}
}

// receiverDirectory is a client registry in a map.
type receiverDirectory map[string]domain.Client

func (d receiverDirectory) Lookup(id string) (domain.Client, bool) {
	c, ok := d[id]
	return c, ok
}

func mustReceiverOAuth(t *testing.T, clients receiverDirectory, logs *strings.Builder) *OAuth {
	t.Helper()
	s := &Service{Access: mustReceiverTokens(t, 5*time.Minute), Now: func() time.Time { return receiverNow }}
	return NewOAuth(s, clients, receiverIssuer, nil, slog.New(slog.NewTextHandler(logs, nil)))
}

// TestReceiverBearer: receiver() takes a receiver token from the
// Authorization header only, checks the client is still a receiver and
// the scope, and answers refusals as RFC 6750 section 3 says.
func TestReceiverBearer(t *testing.T) {
	own := siem
	own.ID, own.Receiver = "own-receiver", domain.ReceiverOwn
	dropped := siem
	dropped.ID = "dropped"
	clients := receiverDirectory{"siem": siem, "own-receiver": own, "dropped": dropped}
	var logs strings.Builder
	o := mustReceiverOAuth(t, clients, &logs)
	mint := func(c domain.Client, scope ...string) string {
		tok, _, err := o.svc.Access.MintReceiverToken(c, scope, receiverNow)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	all, read, manage := mint(siem, domain.ReceiverScopes...), mint(siem, domain.ScopeSSFRead), mint(own, domain.ScopeSSFManage)
	droppedTok := mint(dropped, domain.ReceiverScopes...)
	// The client stops being a receiver after its token was minted.
	dropped.Receiver = domain.ReceiverNone
	clients["dropped"] = dropped
	familyTok, _ := o.svc.Access.Mint(tokens.Grant{Family: domain.Family{ID: "fam-1", Subject: "siem", ClientID: "siem"},
		Scope: []string{"ssf.read", "ssf.manage"}, Audience: []string{receiverIssuer}}, receiverNow)

	get := func(header ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/ssf/streams", nil)
		for _, h := range header {
			r.Header.Add("Authorization", h)
		}
		return r
	}
	inBody := httptest.NewRequest(http.MethodPost, "/ssf/poll", strings.NewReader(url.Values{"access_token": {all}}.Encode()))
	inBody.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	// Both in the header and the query: RFC 6750 allows one method only.
	both := httptest.NewRequest(http.MethodGet, "/ssf/streams?access_token=x", nil)
	both.Header.Set("Authorization", "Bearer "+all)
	const elsewhere = `Bearer realm="tokend", error="invalid_request", error_description="send the access token in the Authorization header (Bearer), never in the URL or the body"`
	tests := []struct {
		name      string
		req       *http.Request
		need      string
		client    string // on success
		status    int
		challenge string // the WWW-Authenticate header, on failure
	}{
		{"all scopes", get("Bearer " + all), domain.ScopeSSFManage, "siem", 0, ""},
		{"read for read", get("Bearer " + read), domain.ScopeSSFRead, "siem", 0, ""},
		{"manage includes read", get("Bearer " + manage), domain.ScopeSSFRead, "own-receiver", 0, ""},
		{"scheme in any case", get("bEARER " + manage), domain.ScopeSSFManage, "own-receiver", 0, ""},
		{"read for manage", get("Bearer " + read), domain.ScopeSSFManage, "", http.StatusForbidden,
			`Bearer realm="tokend", error="insufficient_scope", error_description="the access token does not grant ssf.manage", scope="ssf.manage"`},
		{"no Authorization", get(), domain.ScopeSSFRead, "", http.StatusUnauthorized, `Bearer realm="tokend"`},
		{"Basic credentials", get("Basic c2llbTpzZWNyZXQ="), domain.ScopeSSFRead, "", http.StatusUnauthorized, `Bearer realm="tokend"`},
		{"a family's access token", get("Bearer " + familyTok), domain.ScopeSSFRead, "", http.StatusUnauthorized,
			`Bearer realm="tokend", error="invalid_token", error_description="the access token is not valid"`},
		{"not a JWT", get("Bearer abc.def"), domain.ScopeSSFRead, "", http.StatusUnauthorized,
			`Bearer realm="tokend", error="invalid_token", error_description="the access token is not valid"`},
		{"no longer a receiver", get("Bearer " + droppedTok), domain.ScopeSSFRead, "", http.StatusUnauthorized,
			`Bearer realm="tokend", error="invalid_token", error_description="the token's client is no longer an SSF receiver"`},
		{"malformed token", get("Bearer a b"), domain.ScopeSSFRead, "", http.StatusBadRequest,
			`Bearer realm="tokend", error="invalid_request", error_description="the bearer token is malformed"`},
		{"empty token", get("Bearer "), domain.ScopeSSFRead, "", http.StatusBadRequest,
			`Bearer realm="tokend", error="invalid_request", error_description="the bearer token is malformed"`},
		{"two headers", get("Bearer "+all, "Bearer "+read), domain.ScopeSSFRead, "", http.StatusBadRequest,
			`Bearer realm="tokend", error="invalid_request", error_description="send one Authorization header"`},
		{"token in the query", httptest.NewRequest(http.MethodGet, "/ssf/streams?access_token="+url.QueryEscape(all), nil), domain.ScopeSSFRead, "",
			http.StatusBadRequest, elsewhere},
		{"token in a form body", inBody, domain.ScopeSSFManage, "", http.StatusBadRequest, elsewhere},
		{"header and query", both, domain.ScopeSSFRead, "", http.StatusBadRequest, elsewhere},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := o.receiver(tc.req, tc.need)
			if tc.status == 0 {
				if err != nil || c.ID != tc.client || !c.IsReceiver() {
					t.Fatalf("%+v, %v", c, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted as %q", c.ID)
			}
			w := httptest.NewRecorder()
			writeBearerError(w, err)
			if w.Code != tc.status || w.Header().Get("WWW-Authenticate") != tc.challenge || w.Header().Get("Cache-Control") != "no-store" {
				t.Fatalf("%d %q %v", w.Code, w.Header().Get("WWW-Authenticate"), w.Header())
			}
			var body map[string]string
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["error_description"] == "" {
				t.Fatalf("body %q", w.Body)
			}
		})
	}
	for _, tok := range []string{all, read, manage, droppedTok, familyTok} {
		if strings.Contains(logs.String(), tok) {
			t.Fatal("a token reached the log")
		}
	}
	if !strings.Contains(logs.String(), `why="the client is no longer a receiver" client_id=dropped`) {
		t.Fatalf("refusals not logged:\n%s", logs.String())
	}
}

// TestClientCredentialsToReceiver: a receiver's token from the token
// endpoint is accepted by receiver() with the scope it asked for.
func TestClientCredentialsToReceiver(t *testing.T) {
	const secret = "siem-secret"
	c := siem
	c.Secrets = []domain.ClientSecret{{Hash: domain.HashClientSecret(secret), CreatedAt: receiverNow}}
	var logs strings.Builder
	o := mustReceiverOAuth(t, receiverDirectory{"siem": c}, &logs)
	srv := httptest.NewServer(o.Handler())
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodPost, srv.URL+PathToken, strings.NewReader("grant_type=client_credentials&scope=ssf.read"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("siem", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %v %v", resp.StatusCode, body, err)
	}
	r := httptest.NewRequest(http.MethodGet, "/ssf/streams", nil)
	r.Header.Set("Authorization", "Bearer "+body["access_token"].(string))
	if got, err := o.receiver(r, domain.ScopeSSFRead); err != nil || got.ID != "siem" {
		t.Fatalf("receiver: %+v, %v", got, err)
	}
	if _, err := o.receiver(r, domain.ScopeSSFManage); err == nil {
		t.Fatal("an ssf.read token passed for ssf.manage")
	}
}

// TestWriteBearerErrorOfAnotherError: an error receiver() never returns
// is a server error, without a challenge.
func TestWriteBearerErrorOfAnotherError(t *testing.T) {
	w := httptest.NewRecorder()
	writeBearerError(w, domain.Errorf(domain.EUnavailable, "x"))
	if w.Code != http.StatusInternalServerError || w.Header().Get("WWW-Authenticate") != "" {
		t.Fatalf("%d %v", w.Code, w.Header())
	}
}
