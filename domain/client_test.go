package domain

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

var clientNow = time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)

const (
	secretA = "correct-horse-battery-staple-0123456789abcdef"
	secretB = "another-256-bit-secret-from-tokenctl-xyz0987"
	secretC = "a-third-secret-for-the-second-rotation-55555"
)

var hashA, hashB, hashC = HashClientSecret(secretA), HashClientSecret(secretB), HashClientSecret(secretC)

const publicJWKS = `{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "use": "sig", "kid": "k1"}]}`

func confidential() Client {
	return Client{ID: "web-app", Type: ClientConfidential, Scopes: []string{"openid", "api:read"}, Audiences: []string{"https://api.example.com"}}
}

func wantInvalid(t *testing.T, err error, mentions string) {
	t.Helper()
	if ErrorCode(err) != EInvalidRequest || !strings.Contains(ErrorMessage(err), mentions) {
		t.Fatalf("want invalid_request mentioning %q, got %v", mentions, err)
	}
}

func TestNewClient(t *testing.T) {
	with := func(f func(*Client)) Client {
		c := confidential()
		f(&c)
		return c
	}
	tests := []struct {
		name       string
		given      Client
		withSecret string
		thenErr    string // a word of the invalid_request message; "" for success
		then       func(*testing.T, Client)
	}{
		{"confidential defaults to client_secret_basic and revoke_family", confidential(), hashA, "", func(t *testing.T, c Client) {
			if c.AuthMethod != AuthSecretBasic || c.OnReplay != ReplayRevokeFamily {
				t.Fatalf("defaults: %s, %s", c.AuthMethod, c.OnReplay)
			}
			if len(c.Secrets) != 1 || c.Secrets[0] != (ClientSecret{Hash: hashA, CreatedAt: clientNow}) {
				t.Fatalf("secrets %+v", c.Secrets)
			}
			if !c.CreatedAt.Equal(clientNow) || !c.UpdatedAt.Equal(clientNow) {
				t.Fatalf("times %v %v", c.CreatedAt, c.UpdatedAt)
			}
		}},
		{"public defaults to none", with(func(c *Client) { c.Type = ClientPublic }), "", "", func(t *testing.T, c Client) {
			if c.AuthMethod != AuthNone || c.Secrets != nil {
				t.Fatalf("public client: %s %v", c.AuthMethod, c.Secrets)
			}
		}},
		{"repeats dropped, lists never nil", with(func(c *Client) { c.Scopes = []string{"a", "b", "a"}; c.Audiences = nil }), hashA, "", func(t *testing.T, c Client) {
			if !reflect.DeepEqual(c.Scopes, []string{"a", "b"}) || c.Audiences == nil || len(c.Audiences) != 0 {
				t.Fatalf("scopes %q audiences %#v", c.Scopes, c.Audiences)
			}
		}},
		{"private_key_jwt with public keys", with(func(c *Client) { c.AuthMethod = AuthPrivateKeyJWT; c.JWKS = json.RawMessage(publicJWKS) }), "", "", func(t *testing.T, c Client) {
			if strings.Contains(string(c.JWKS), " ") || c.Secrets != nil {
				t.Fatalf("jwks not compacted or secrets kept: %s %v", c.JWKS, c.Secrets)
			}
		}},
		{"a resource server, for audiences not its own", with(func(c *Client) {
			c.Resources = []string{"https://billing.example.com", "https://api.example.com", "https://billing.example.com"}
		}), hashA, "", func(t *testing.T, c Client) {
			if !reflect.DeepEqual(c.Resources, []string{"https://billing.example.com", "https://api.example.com"}) {
				t.Fatalf("resources %q", c.Resources)
			}
		}},
		{"lifetimes", with(func(c *Client) {
			c.AccessTTL, c.RefreshIdleTTL, c.RefreshAbsoluteTTL = time.Minute, time.Hour, 2*time.Hour
		}), hashA, "", nil},

		{"no client id", with(func(c *Client) { c.ID = "" }), hashA, "client_id", nil},
		{"unprintable client id", with(func(c *Client) { c.ID = "web\napp" }), hashA, "client_id", nil},
		{"no type", with(func(c *Client) { c.Type = "" }), hashA, "type", nil},
		{"unknown type", with(func(c *Client) { c.Type = "trusted" }), hashA, "type", nil},
		{"public with a secret method", with(func(c *Client) { c.Type = ClientPublic; c.AuthMethod = AuthSecretPost }), hashA, "auth_method", nil},
		{"confidential with none", with(func(c *Client) { c.AuthMethod = AuthNone }), "", "auth_method", nil},
		{"unknown method", with(func(c *Client) { c.AuthMethod = "tls_client_auth" }), "", "auth_method", nil},
		{"secret method without a secret", confidential(), "", "secret_sha256 is required", nil},
		{"public client with a secret", with(func(c *Client) { c.Type = ClientPublic }), hashA, "secret_sha256", nil},
		{"hash not hex", confidential(), strings.Repeat("g", 64), "secret_sha256", nil},
		{"hash in capitals", confidential(), strings.ToUpper(hashA), "secret_sha256", nil},
		{"hash too short", confidential(), hashA[:63], "secret_sha256", nil},
		{"a plaintext secret instead of its hash", confidential(), secretA, "secret_sha256", nil},
		{"jwks with a secret method", with(func(c *Client) { c.JWKS = json.RawMessage(publicJWKS) }), hashA, "jwks", nil},
		{"private_key_jwt without jwks", with(func(c *Client) { c.AuthMethod = AuthPrivateKeyJWT }), "", "jwks", nil},
		{"invalid scope token", with(func(c *Client) { c.Scopes = []string{"api read"} }), hashA, "scopes", nil},
		{"empty scope token", with(func(c *Client) { c.Scopes = []string{""} }), hashA, "scopes", nil},
		{"too many scopes", with(func(c *Client) { c.Scopes = scopes(MaxScopes + 1) }), hashA, "scopes", nil},
		{"invalid audience", with(func(c *Client) { c.Audiences = []string{"https://a b"} }), hashA, "audiences", nil},
		{"invalid resource", with(func(c *Client) { c.Resources = []string{"https://a b"} }), hashA, "resources", nil},
		{"a public resource server", with(func(c *Client) { c.Type = ClientPublic; c.Resources = []string{"https://api.example.com"} }), "", "resources", nil},
		{"negative access_ttl", with(func(c *Client) { c.AccessTTL = -time.Second }), hashA, "access_ttl", nil},
		{"negative reuse_interval", with(func(c *Client) { c.ReuseInterval = -time.Second }), hashA, "reuse_interval", nil},
		{"huge refresh_absolute_ttl", with(func(c *Client) { c.RefreshAbsoluteTTL = MaxClientTTL + 1 }), hashA, "refresh_absolute_ttl", nil},
		{"idle longer than absolute", with(func(c *Client) { c.RefreshIdleTTL, c.RefreshAbsoluteTTL = 2*time.Hour, time.Hour }), hashA, "refresh_idle_ttl", nil},
		{"unknown on_replay", with(func(c *Client) { c.OnReplay = "ignore" }), hashA, "on_replay", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NewClient(tt.given, tt.withSecret, clientNow)
			if tt.thenErr != "" {
				wantInvalid(t, err, tt.thenErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.then != nil {
				tt.then(t, got)
			}
		})
	}
}

func TestValidateJWKS(t *testing.T) {
	key := func(members string) string {
		return `{"keys":[{"kty":"EC","crv":"P-256","x":"x","y":"y"` + members + `}]}`
	}
	tests := []struct {
		name, jwks string
		thenErr    string
	}{
		{"EC public key", key(""), ""},
		{"RSA public key for signing", `{"keys":[{"kty":"RSA","n":"n","e":"AQAB","use":"sig"}]}`, ""},
		{"absent", "", "required"},
		{"null", "null", "required"},
		{"not a set", `[{"kty":"EC"}]`, "Key Set"},
		{"no keys", `{"keys":[]}`, "1..16"},
		{"too many keys", `{"keys":[` + strings.Repeat(`{"kty":"OKP"},`, MaxJWKSKeys) + `{"kty":"OKP"}]}`, "1..16"},
		{"too large", `{"keys":[{"kty":"OKP","x":"` + strings.Repeat("A", MaxJWKSBytes) + `"}]}`, "larger"},
		{"EC private key", key(`,"d":"secret"`), "private key material"},
		{"RSA private key", `{"keys":[{"kty":"RSA","n":"n","e":"AQAB","p":"p","q":"q"}]}`, "private key material"},
		{"symmetric key", `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`, "private key material"},
		{"unknown kty", `{"keys":[{"kty":"oct"}]}`, "kty"},
		{"no kty", `{"keys":[{"x":"x"}]}`, "kty"},
		{"encryption key", key(`,"use":"enc"`), "use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateJWKS(json.RawMessage(tt.jwks))
			if tt.thenErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantInvalid(t, err, tt.thenErr)
		})
	}
}

func mustClient(t *testing.T, c Client, secretHash string) Client {
	t.Helper()
	c, err := NewClient(c, secretHash, clientNow)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVerifySecretThroughRotations(t *testing.T) {
	c := mustClient(t, confidential(), hashA)
	if !c.VerifySecret(secretA, clientNow) || c.VerifySecret(secretB, clientNow) || c.VerifySecret("", clientNow) {
		t.Fatal("a new client verifies its secret and nothing else")
	}
	if c.VerifySecret(hashA, clientNow) {
		t.Fatal("the stored hash works as a secret")
	}

	// A rotation with a grace period: both verify until it ends, then only the new one.
	t1 := clientNow.Add(time.Hour)
	rotated, err := c.RotateSecret(hashB, 24*time.Hour, t1)
	if err != nil {
		t.Fatal(err)
	}
	end := t1.Add(24 * time.Hour)
	for _, tt := range []struct {
		secret string
		at     time.Time
		want   bool
	}{
		{secretA, t1, true}, {secretB, t1, true},
		{secretA, end.Add(-time.Nanosecond), true},
		{secretA, end, false}, {secretB, end, true},
		{secretA, end.Add(time.Hour), false}, {secretB, end.Add(100 * 24 * time.Hour), true},
	} {
		if got := rotated.VerifySecret(tt.secret, tt.at); got != tt.want {
			t.Errorf("secret %.8s at grace end %+v: %v, want %v", tt.secret, tt.at.Sub(end), got, tt.want)
		}
	}
	if !c.VerifySecret(secretA, end.Add(time.Hour)) || len(c.Secrets) != 1 || !c.Secrets[0].ExpiresAt.IsZero() {
		t.Fatal("rotating changed the client it started from")
	}
	if !rotated.UpdatedAt.Equal(t1) || !rotated.CreatedAt.Equal(clientNow) {
		t.Fatalf("times after rotation: created %v updated %v", rotated.CreatedAt, rotated.UpdatedAt)
	}

	// Rotating again inside the grace period keeps the earlier end of A;
	// with grace 0 every older secret stops at once.
	again, err := rotated.RotateSecret(hashC, 48*time.Hour, t1.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Secrets) != 3 || !again.Secrets[0].ExpiresAt.Equal(end) || !again.Secrets[1].ExpiresAt.Equal(t1.Add(49*time.Hour)) {
		t.Fatalf("secrets after a second rotation: %+v", again.Secrets)
	}
	now, err := rotated.RotateSecret(hashC, 0, t1.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if now.VerifySecret(secretA, t1.Add(time.Hour)) || now.VerifySecret(secretB, t1.Add(time.Hour)) || !now.VerifySecret(secretC, t1.Add(time.Hour)) || len(now.Secrets) != 1 {
		t.Fatalf("grace 0: the old secrets still verify: %+v", now.Secrets)
	}

	// Expired secrets are dropped at the next rotation.
	later, err := rotated.RotateSecret(hashC, time.Hour, end.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if len(later.Secrets) != 2 || later.Secrets[0].Hash != hashB {
		t.Fatalf("after the grace period ended: %+v", later.Secrets)
	}
}

func TestRotateSecretRefusals(t *testing.T) {
	c := mustClient(t, confidential(), hashA)
	public := mustClient(t, Client{ID: "spa", Type: ClientPublic, Scopes: []string{}, Audiences: []string{}}, "")
	_, err := c.RotateSecret(hashA, time.Hour, clientNow)
	wantInvalid(t, err, "already")
	_, err = c.RotateSecret("nope", time.Hour, clientNow)
	wantInvalid(t, err, "secret_sha256")
	_, err = c.RotateSecret(hashB, -time.Second, clientNow)
	wantInvalid(t, err, "grace")
	_, err = public.RotateSecret(hashB, time.Hour, clientNow)
	wantInvalid(t, err, "no secret")
	if public.VerifySecret("", clientNow) || public.VerifySecret(secretA, clientNow) {
		t.Fatal("a public client verified a secret")
	}
	for i := range MaxClientSecrets - 1 {
		if c, err = c.RotateSecret(HashClientSecret(string(rune('a'+i))), time.Hour, clientNow); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.RotateSecret(hashB, time.Hour, clientNow)
	wantInvalid(t, err, "secrets at once")
	if _, err := c.RotateSecret(hashB, 0, clientNow); err != nil {
		t.Fatalf("grace 0 ends the others, so it always fits: %v", err)
	}
}

func TestClientUpdate(t *testing.T) {
	secretClient := mustClient(t, confidential(), hashA)
	jwtClient := mustClient(t, Client{ID: "web-app", Type: ClientConfidential, AuthMethod: AuthPrivateKeyJWT, JWKS: json.RawMessage(publicJWKS),
		Scopes: []string{}, Audiences: []string{}}, "")
	rotated, err := secretClient.RotateSecret(hashB, time.Hour, clientNow)
	if err != nil {
		t.Fatal(err)
	}
	later := clientNow.Add(time.Minute)
	tests := []struct {
		name       string
		given      Client
		when       func(Client) Client
		withSecret string
		thenErr    string
		then       func(*testing.T, Client)
	}{
		{"settings change, secret kept", secretClient, func(c Client) Client {
			c.Scopes, c.AuthMethod, c.Secrets = []string{"openid"}, AuthSecretPost, nil
			return c
		}, "", "", func(t *testing.T, c Client) {
			if !c.VerifySecret(secretA, later) || c.AuthMethod != AuthSecretPost || !reflect.DeepEqual(c.Scopes, []string{"openid"}) {
				t.Fatalf("updated client %+v", c)
			}
			if !c.CreatedAt.Equal(clientNow) || !c.UpdatedAt.Equal(later) {
				t.Fatalf("times %v %v", c.CreatedAt, c.UpdatedAt)
			}
		}},
		{"secrets in the update are ignored", secretClient, func(c Client) Client {
			c.Secrets = []ClientSecret{{Hash: hashC, CreatedAt: later}}
			return c
		}, "", "", func(t *testing.T, c Client) {
			if c.VerifySecret(secretC, later) || !c.VerifySecret(secretA, later) {
				t.Fatal("an update replaced the secrets")
			}
		}},
		{"a secret in its grace period stays until it ends", rotated, func(c Client) Client { return c }, "", "", func(t *testing.T, c Client) {
			if len(c.Secrets) != 2 || !c.VerifySecret(secretA, later) || c.VerifySecret(secretA, clientNow.Add(time.Hour)) {
				t.Fatalf("secrets %+v", c.Secrets)
			}
		}},
		{"a new secret while one exists", secretClient, func(c Client) Client { return c }, hashB, "rotate_secret", nil},
		{"to private_key_jwt drops the secrets", secretClient, func(c Client) Client {
			c.AuthMethod, c.JWKS = AuthPrivateKeyJWT, json.RawMessage(publicJWKS)
			return c
		}, "", "", func(t *testing.T, c Client) {
			if c.Secrets != nil || c.VerifySecret(secretA, later) {
				t.Fatal("secrets kept after moving to private_key_jwt")
			}
		}},
		{"to a secret method needs a secret", jwtClient, func(c Client) Client {
			c.AuthMethod, c.JWKS = AuthSecretBasic, nil
			return c
		}, "", "secret_sha256 is required", nil},
		{"to a secret method with a secret", jwtClient, func(c Client) Client {
			c.AuthMethod, c.JWKS = AuthSecretBasic, nil
			return c
		}, hashB, "", func(t *testing.T, c Client) {
			if !c.VerifySecret(secretB, later) || len(c.Secrets) != 1 || !c.Secrets[0].CreatedAt.Equal(later) {
				t.Fatalf("secrets %+v", c.Secrets)
			}
		}},
		{"a secret for a method without one", jwtClient, func(c Client) Client { return c }, hashB, "secret_sha256", nil},
		{"to public", secretClient, func(c Client) Client {
			c.Type, c.AuthMethod = ClientPublic, ""
			return c
		}, "", "", func(t *testing.T, c Client) {
			if c.AuthMethod != AuthNone || c.Secrets != nil {
				t.Fatalf("public client %+v", c)
			}
		}},
		{"invalid settings", secretClient, func(c Client) Client {
			c.OnReplay = "shrug"
			return c
		}, "", "on_replay", nil},
		{"no type", secretClient, func(c Client) Client {
			c.Type = ""
			return c
		}, hashB, "type", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.given.Update(tt.when(tt.given), tt.withSecret, later)
			if tt.thenErr != "" {
				wantInvalid(t, err, tt.thenErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.then != nil {
				tt.then(t, got)
			}
		})
	}
	// An update drops the secrets that have expired...
	after, err := rotated.Update(rotated, "", clientNow.Add(2*time.Hour))
	if err != nil || len(after.Secrets) != 1 || after.Secrets[0].Hash != hashB {
		t.Fatalf("secrets after the grace period: %+v, %v", after.Secrets, err)
	}
	// ...and a client left with none must be given a new one.
	expired := secretClient
	expired.Secrets = []ClientSecret{{Hash: hashA, CreatedAt: clientNow, ExpiresAt: clientNow.Add(time.Hour)}}
	_, err = expired.Update(expired, "", clientNow.Add(time.Hour))
	wantInvalid(t, err, "no secret")
	if again, err := expired.Update(expired, hashB, clientNow.Add(time.Hour)); err != nil || !again.VerifySecret(secretB, clientNow.Add(time.Hour)) {
		t.Fatalf("a new secret for a client whose secrets expired: %v", err)
	}
}

func TestCheckGrant(t *testing.T) {
	c := mustClient(t, Client{ID: "web-app", Type: ClientConfidential, Scopes: []string{"openid", "api:read"},
		Audiences: []string{"https://api.example.com", "https://billing.example.com"}}, hashA)
	none := mustClient(t, Client{ID: "bare", Type: ClientPublic}, "")
	tests := []struct {
		name     string
		client   Client
		scope    []string
		audience []string
		thenCode string
	}{
		{"nothing asked", c, nil, nil, ""},
		{"within both lists", c, []string{"api:read", "openid"}, []string{"https://billing.example.com"}, ""},
		{"a scope outside", c, []string{"openid", "api:write"}, nil, EInvalidScope},
		{"an audience outside", c, []string{"openid"}, []string{"https://api.example.com", "https://evil.example"}, EInvalidTarget},
		{"scope checked before audience", c, []string{"admin"}, []string{"https://evil.example"}, EInvalidScope},
		{"empty lists allow nothing", none, []string{"openid"}, nil, EInvalidScope},
		{"empty lists allow no audience", none, nil, []string{"https://api.example.com"}, EInvalidTarget},
		{"empty lists allow an empty grant", none, []string{}, []string{}, ""},
		{"prefixes do not match", c, []string{"api"}, nil, EInvalidScope},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.client.CheckGrant(tt.scope, tt.audience)
			if tt.thenCode == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if ErrorCode(err) != tt.thenCode {
				t.Fatalf("want %s, got %v", tt.thenCode, err)
			}
		})
	}
}

func TestClientLifetimes(t *testing.T) {
	deployment := Policy{ReuseInterval: 10 * time.Second, IdleTTL: 336 * time.Hour, AbsoluteTTL: 720 * time.Hour}
	if got := (Client{}).Policy(deployment); got != deployment {
		t.Fatalf("a client without lifetimes: %+v", got)
	}
	c := Client{ReuseInterval: time.Second, RefreshIdleTTL: time.Hour, RefreshAbsoluteTTL: 2 * time.Hour, AccessTTL: time.Minute}
	if got := c.Policy(deployment); got != (Policy{ReuseInterval: time.Second, IdleTTL: time.Hour, AbsoluteTTL: 2 * time.Hour}) {
		t.Fatalf("client lifetimes: %+v", got)
	}
	if (Client{}).AccessTTLOr(5*time.Minute) != 5*time.Minute || c.AccessTTLOr(5*time.Minute) != time.Minute {
		t.Fatal("AccessTTLOr")
	}
}
