package domain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"
)

// ClientType is an OAuth client type (RFC 6749 section 2.1).
type ClientType string

const (
	// ClientPublic cannot keep a secret (a browser or mobile app).
	ClientPublic ClientType = "public"
	// ClientConfidential authenticates with a secret or a private key.
	ClientConfidential ClientType = "confidential"
)

// AuthMethod is how a client authenticates at the token endpoint: RFC 7591's
// token_endpoint_auth_method.
type AuthMethod string

const (
	AuthNone          AuthMethod = "none" // public clients
	AuthSecretBasic   AuthMethod = "client_secret_basic"
	AuthSecretPost    AuthMethod = "client_secret_post"
	AuthPrivateKeyJWT AuthMethod = "private_key_jwt"
)

// UsesSecret reports whether m authenticates with a client secret.
func (m AuthMethod) UsesSecret() bool { return m == AuthSecretBasic || m == AuthSecretPost }

// ReplayAction is what a replay of one of a client's refresh tokens does.
type ReplayAction string

const (
	// ReplayRevokeFamily revokes the family the replayed token belongs to
	// (the default, and what the contract describes).
	ReplayRevokeFamily ReplayAction = "revoke_family"
	// ReplayRevokeSubject revokes every family of the token's subject.
	ReplayRevokeSubject ReplayAction = "revoke_subject"
	// ReplayAuditOnly records the replay and refuses the token, revoking
	// nothing.
	ReplayAuditOnly ReplayAction = "audit_only"
)

// Limits of a registered client.
const (
	// MaxClientSecrets bounds the secrets a client holds at once: the
	// current one and those still in their rotation grace period.
	MaxClientSecrets = 5
	MaxJWKSKeys      = 16
	MaxJWKSBytes     = 32 << 10
	// MaxClientTTL bounds every per-client lifetime, so adding it to a time
	// cannot overflow.
	MaxClientTTL = 10 * 365 * 24 * time.Hour
	// DefaultSecretGrace is how long a client's previous secret keeps
	// verifying after a rotation, unless the admin says otherwise: long
	// enough to roll the new secret out to every copy of the client.
	DefaultSecretGrace = 24 * time.Hour
)

// ClientSecret is one secret of a client, as its SHA-256: the secret itself
// is never stored or sent to tokend. A secret is 256 random bits, so a fast
// hash is enough: guessing it from the hash is as hard as guessing it.
type ClientSecret struct {
	Hash      string // lowercase hex SHA-256 of the secret
	CreatedAt time.Time
	ExpiresAt time.Time // zero: never; else the secret is refused from then on
}

// Client is a registered OAuth client. Values returned by a registry share
// their slices with it: treat them as read-only.
type Client struct {
	ID         string
	Type       ClientType
	AuthMethod AuthMethod
	// Secrets are set for the secret methods only; JWKS (a JSON Web Key Set
	// of public keys) for private_key_jwt only.
	Secrets []ClientSecret
	JWKS    json.RawMessage
	// Scopes and Audiences list what the client may be granted. An empty list
	// allows none: there is no wildcard, every scope and resource is listed.
	Scopes    []string
	Audiences []string
	// Resources, for a confidential client only, makes it a resource server
	// for these audiences: it may introspect access tokens issued for any
	// of them, whatever client they were issued to. They need not be among
	// its own Audiences.
	Resources []string
	// Receiver, for a confidential client only, makes it an SSF receiver:
	// it may get access tokens for the SSF endpoints (client_credentials)
	// and see the events its role allows.
	Receiver ReceiverRole
	// Lifetimes of the client's tokens; 0 means the deployment's setting
	// (--access-ttl, --refresh-idle-ttl, --refresh-absolute-ttl,
	// --reuse-interval).
	AccessTTL          time.Duration
	RefreshIdleTTL     time.Duration
	RefreshAbsoluteTTL time.Duration
	ReuseInterval      time.Duration
	OnReplay           ReplayAction
	// DPoPBound is RFC 9449's dpop_bound_access_tokens (section 5.2): the
	// client's families are bound to a DPoP key at issue and every refresh
	// carries a proof. DPoPRequireNonce makes its proofs carry a server
	// nonce (section 8), whatever the deployment's setting.
	DPoPBound        bool
	DPoPRequireNonce bool
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// HashClientSecret returns the lowercase hex SHA-256 of a client secret: the
// form a registry stores and the admin sends.
func HashClientSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// VerifySecret reports whether secret is one of c's secrets and has not
// expired at now. Every stored hash is compared in constant time, so the
// answer takes as long whichever secret matched. A client whose method uses
// no secret verifies none.
func (c Client) VerifySecret(secret string, now time.Time) bool {
	if !c.AuthMethod.UsesSecret() || secret == "" {
		return false
	}
	got := HashClientSecret(secret)
	ok := false
	for _, s := range c.Secrets {
		if SameHash(got, s.Hash) && s.live(now) {
			ok = true
		}
	}
	return ok
}

func (s ClientSecret) live(now time.Time) bool {
	return s.ExpiresAt.IsZero() || now.Before(s.ExpiresAt)
}

// CheckGrant returns nil if c may be granted every scope in scope and every
// resource in audience; else an EInvalidScope error naming the first scope
// outside c's list, or an EInvalidTarget error naming the first resource.
func (c Client) CheckGrant(scope, audience []string) error {
	for _, s := range scope {
		if !contains(c.Scopes, s) {
			return Errorf(EInvalidScope, "scope %q is not allowed for this client", truncate(s))
		}
	}
	for _, a := range audience {
		if !contains(c.Audiences, a) {
			return Errorf(EInvalidTarget, "audience %q is not allowed for this client", truncate(a))
		}
	}
	return nil
}

// Policy returns the deployment's policy with c's own lifetimes in place of
// those c sets.
func (c Client) Policy(deployment Policy) Policy {
	p := deployment
	if c.ReuseInterval > 0 {
		p.ReuseInterval = c.ReuseInterval
	}
	if c.RefreshIdleTTL > 0 {
		p.IdleTTL = c.RefreshIdleTTL
	}
	if c.RefreshAbsoluteTTL > 0 {
		p.AbsoluteTTL = c.RefreshAbsoluteTTL
	}
	return p
}

// AccessTTLOr returns c's access-token lifetime, or deployment if c sets none.
func (c Client) AccessTTLOr(deployment time.Duration) time.Duration {
	if c.AccessTTL > 0 {
		return c.AccessTTL
	}
	return deployment
}

// NewClient returns c registered at now, with the defaults filled in
// (auth_method: none for public clients, client_secret_basic for
// confidential ones as in RFC 7591; on_replay: revoke_family) and, for the
// secret methods, the secret whose SHA-256 is secretHash. It returns an
// EInvalidRequest error naming the field that is wrong.
func NewClient(c Client, secretHash string, now time.Time) (Client, error) {
	if err := c.validType(); err != nil {
		return Client{}, err
	}
	c = c.withDefaults()
	c.Secrets = nil
	switch {
	case !c.AuthMethod.UsesSecret() && secretHash != "":
		return Client{}, Errorf(EInvalidRequest, "secret_sha256 goes with client_secret_basic and client_secret_post, not %s", c.AuthMethod)
	case !c.AuthMethod.UsesSecret():
	case secretHash == "":
		return Client{}, Errorf(EInvalidRequest, "secret_sha256 is required for %s", c.AuthMethod)
	default:
		if err := validSecretHash(secretHash); err != nil {
			return Client{}, err
		}
		c.Secrets = []ClientSecret{{Hash: secretHash, CreatedAt: now}}
	}
	c.CreatedAt, c.UpdatedAt = now, now
	return c.normalized()
}

// Update returns c changed to next's settings at now. c's creation time
// stays; so do its unexpired secrets while next uses a secret method. A
// client that had no secret (it used another method) needs secretHash to
// move to a secret method; one that has a secret changes it with
// RotateSecret only. Errors are EInvalidRequest, naming the field.
func (c Client) Update(next Client, secretHash string, now time.Time) (Client, error) {
	if err := next.validType(); err != nil {
		return Client{}, err
	}
	next = next.withDefaults()
	next.ID, next.CreatedAt, next.UpdatedAt = c.ID, c.CreatedAt, now
	next.Secrets = nil
	var kept []ClientSecret
	if c.AuthMethod.UsesSecret() {
		for _, s := range c.Secrets {
			if s.live(now) {
				kept = append(kept, s)
			}
		}
	}
	switch {
	case !next.AuthMethod.UsesSecret() && secretHash != "":
		return Client{}, Errorf(EInvalidRequest, "secret_sha256 goes with client_secret_basic and client_secret_post, not %s", next.AuthMethod)
	case !next.AuthMethod.UsesSecret():
	case secretHash != "" && len(kept) > 0:
		return Client{}, Errorf(EInvalidRequest, "secret_sha256: the client has a secret; change it with rotate_secret")
	case secretHash != "":
		if err := validSecretHash(secretHash); err != nil {
			return Client{}, err
		}
		next.Secrets = []ClientSecret{{Hash: secretHash, CreatedAt: now}}
	case len(kept) == 0:
		return Client{}, Errorf(EInvalidRequest, "secret_sha256 is required: the client has no secret for %s", next.AuthMethod)
	default:
		next.Secrets = kept
	}
	return next.normalized()
}

// RotateSecret returns c with a new secret, whose SHA-256 is secretHash,
// made at now. The secrets c had stop verifying at now+grace (or at their
// own expiry, if sooner); grace 0 ends them at once. Expired secrets are
// dropped. Errors are EInvalidRequest: c uses no secret, the hash is
// malformed or already c's, grace is negative, or more than
// MaxClientSecrets would verify at once.
func (c Client) RotateSecret(secretHash string, grace time.Duration, now time.Time) (Client, error) {
	if !c.AuthMethod.UsesSecret() {
		return Client{}, Errorf(EInvalidRequest, "client_id: the client authenticates with %s, which has no secret", c.AuthMethod)
	}
	if err := validSecretHash(secretHash); err != nil {
		return Client{}, err
	}
	if grace < 0 || grace > MaxClientTTL {
		return Client{}, Errorf(EInvalidRequest, "grace must be 0 or more, at most %v", MaxClientTTL)
	}
	end := now.Add(grace)
	secrets := make([]ClientSecret, 0, len(c.Secrets)+1)
	for _, s := range c.Secrets {
		if SameHash(s.Hash, secretHash) {
			return Client{}, Errorf(EInvalidRequest, "secret_sha256 is already a secret of this client")
		}
		if !s.live(now) || grace == 0 {
			continue
		}
		if s.ExpiresAt.IsZero() || end.Before(s.ExpiresAt) {
			s.ExpiresAt = end
		}
		secrets = append(secrets, s)
	}
	secrets = append(secrets, ClientSecret{Hash: secretHash, CreatedAt: now})
	if len(secrets) > MaxClientSecrets {
		return Client{}, Errorf(EInvalidRequest, "the client would have %d secrets at once, at most %d: rotate with a shorter grace, or after the last grace period ends", len(secrets), MaxClientSecrets)
	}
	c.Secrets, c.UpdatedAt = secrets, now
	return c.normalized()
}

func (c Client) withDefaults() Client {
	if c.AuthMethod == "" {
		switch c.Type {
		case ClientPublic:
			c.AuthMethod = AuthNone
		case ClientConfidential:
			c.AuthMethod = AuthSecretBasic
		}
	}
	if c.OnReplay == "" {
		c.OnReplay = ReplayRevokeFamily
	}
	return c
}

// normalized drops repeated scopes and audiences, compacts the JWKS and
// validates the result.
func (c Client) normalized() (Client, error) {
	var err error
	if c.Scopes, err = validScopeList(c.Scopes); err != nil {
		return Client{}, err
	}
	if c.Audiences, err = ValidateAudiences(c.Audiences); err != nil {
		return Client{}, Errorf(EInvalidRequest, "audiences: %s", ErrorMessage(err))
	}
	if c.Resources, err = ValidateAudiences(c.Resources); err != nil {
		return Client{}, Errorf(EInvalidRequest, "resources: %s", ErrorMessage(err))
	}
	if len(c.JWKS) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, c.JWKS); err != nil {
			return Client{}, Errorf(EInvalidRequest, "jwks is not JSON")
		}
		c.JWKS = buf.Bytes()
	}
	return c, c.Validate()
}

// Validate returns nil if c is a consistent registration, else an
// EInvalidRequest error naming the field that is wrong.
func (c Client) Validate() error {
	if err := ValidateName("client_id", c.ID); err != nil {
		return err
	}
	if err := c.validType(); err != nil {
		return err
	}
	if (c.Type == ClientPublic) != (c.AuthMethod == AuthNone) {
		if c.Type == ClientPublic {
			return Errorf(EInvalidRequest, "auth_method of a public client must be none")
		}
		return Errorf(EInvalidRequest, "auth_method of a confidential client must be client_secret_basic, client_secret_post or private_key_jwt")
	}
	switch c.AuthMethod {
	case AuthNone, AuthSecretBasic, AuthSecretPost, AuthPrivateKeyJWT:
	default:
		return Errorf(EInvalidRequest, "auth_method must be none, client_secret_basic, client_secret_post or private_key_jwt")
	}
	if err := c.validateCredentials(); err != nil {
		return err
	}
	if _, err := validScopeList(c.Scopes); err != nil {
		return err
	}
	if _, err := ValidateAudiences(c.Audiences); err != nil {
		return Errorf(EInvalidRequest, "audiences: %s", ErrorMessage(err))
	}
	if _, err := ValidateAudiences(c.Resources); err != nil {
		return Errorf(EInvalidRequest, "resources: %s", ErrorMessage(err))
	}
	if len(c.Resources) > 0 && c.Type != ClientConfidential {
		// Introspection answers confidential clients only.
		return Errorf(EInvalidRequest, "resources go with confidential clients only: a public client cannot introspect")
	}
	if err := c.validReceiver(); err != nil {
		return err
	}
	for _, d := range []struct {
		field string
		value time.Duration
	}{{"access_ttl", c.AccessTTL}, {"refresh_idle_ttl", c.RefreshIdleTTL}, {"refresh_absolute_ttl", c.RefreshAbsoluteTTL}, {"reuse_interval", c.ReuseInterval}} {
		if d.value < 0 || d.value > MaxClientTTL {
			return Errorf(EInvalidRequest, "%s must be 0 (the deployment's setting) or more, at most %v", d.field, MaxClientTTL)
		}
	}
	if c.RefreshIdleTTL > 0 && c.RefreshAbsoluteTTL > 0 && c.RefreshIdleTTL > c.RefreshAbsoluteTTL {
		return Errorf(EInvalidRequest, "refresh_idle_ttl must not be longer than refresh_absolute_ttl")
	}
	switch c.OnReplay {
	case ReplayRevokeFamily, ReplayRevokeSubject, ReplayAuditOnly:
	default:
		return Errorf(EInvalidRequest, "on_replay must be revoke_family, revoke_subject or audit_only")
	}
	return nil
}

func (c Client) validType() error {
	if c.Type != ClientPublic && c.Type != ClientConfidential {
		return Errorf(EInvalidRequest, "type must be public or confidential")
	}
	return nil
}

func (c Client) validateCredentials() error {
	if c.AuthMethod.UsesSecret() {
		if len(c.Secrets) == 0 {
			return Errorf(EInvalidRequest, "secret_sha256 is required for %s", c.AuthMethod)
		}
		if len(c.Secrets) > MaxClientSecrets {
			return Errorf(EInvalidRequest, "secrets: more than %d", MaxClientSecrets)
		}
		for _, s := range c.Secrets {
			if err := validSecretHash(s.Hash); err != nil {
				return err
			}
			if s.CreatedAt.IsZero() {
				return Errorf(EInvalidRequest, "secrets: created_at is required")
			}
		}
	} else if len(c.Secrets) > 0 {
		return Errorf(EInvalidRequest, "secrets go with client_secret_basic and client_secret_post, not %s", c.AuthMethod)
	}
	if c.AuthMethod == AuthPrivateKeyJWT {
		return ValidateJWKS(c.JWKS)
	}
	if len(c.JWKS) > 0 {
		return Errorf(EInvalidRequest, "jwks goes with private_key_jwt only")
	}
	return nil
}

// validSecretHash checks a secret's SHA-256: 64 lowercase hex digits.
func validSecretHash(h string) error {
	if len(h) != 2*sha256.Size {
		return Errorf(EInvalidRequest, "secret_sha256 must be 64 lowercase hex digits (the SHA-256 of the secret)")
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return Errorf(EInvalidRequest, "secret_sha256 must be 64 lowercase hex digits (the SHA-256 of the secret)")
		}
	}
	return nil
}

// validScopeList checks a list of scope tokens and returns it without
// repeats.
func validScopeList(scopes []string) ([]string, error) {
	out := make([]string, 0, len(scopes))
	for _, s := range scopes {
		if s == "" || len(s) > MaxScopeBytes || !validScopeToken(s) {
			return nil, Errorf(EInvalidRequest, "scopes: %q is not a valid scope token", truncate(s))
		}
		if !contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) > MaxScopes {
		return nil, Errorf(EInvalidRequest, "scopes: more than %d", MaxScopes)
	}
	return out, nil
}

// privateJWKMembers are the JWK members (RFC 7518 section 6) that hold
// private or symmetric key material.
var privateJWKMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// ValidateJWKS checks a JSON Web Key Set of public keys (RFC 7517): an
// object whose "keys" lists 1..MaxJWKSKeys keys of type RSA, EC or OKP, for
// signing, with no private key material; at most MaxJWKSBytes. It returns
// an EInvalidRequest error naming what is wrong.
func ValidateJWKS(raw json.RawMessage) error {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return Errorf(EInvalidRequest, "jwks is required for private_key_jwt")
	}
	if len(raw) > MaxJWKSBytes {
		return Errorf(EInvalidRequest, "jwks is larger than %d bytes", MaxJWKSBytes)
	}
	var set struct {
		Keys []map[string]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(raw, &set); err != nil {
		return Errorf(EInvalidRequest, "jwks must be a JSON Web Key Set: {\"keys\": [...]}")
	}
	if len(set.Keys) == 0 || len(set.Keys) > MaxJWKSKeys {
		return Errorf(EInvalidRequest, "jwks must hold 1..%d keys", MaxJWKSKeys)
	}
	for i, k := range set.Keys {
		for _, m := range privateJWKMembers {
			if _, ok := k[m]; ok {
				return Errorf(EInvalidRequest, "jwks key %d holds private key material (%q): register public keys only", i, m)
			}
		}
		var kty, use string
		if json.Unmarshal(k["kty"], &kty) != nil || (kty != "RSA" && kty != "EC" && kty != "OKP") {
			return Errorf(EInvalidRequest, "jwks key %d: kty must be RSA, EC or OKP", i)
		}
		if u, ok := k["use"]; ok && (json.Unmarshal(u, &use) != nil || use != "sig") {
			return Errorf(EInvalidRequest, "jwks key %d: use must be sig", i)
		}
	}
	return nil
}
