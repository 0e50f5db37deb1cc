package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/ratelimit"
)

// ClientDirectory finds registered OAuth clients (registry.Registry).
type ClientDirectory interface {
	Lookup(clientID string) (domain.Client, bool)
}

// OAuth serves the standard OAuth 2.0 endpoints in front of the same
// commands as NATS: the refresh_token grant (RFC 6749 section 6), the
// client_credentials grant for SSF receivers (section 4.4, clienttoken.go),
// revocation (RFC 7009), introspection (RFC 7662) and the server's metadata
// (RFC 8414), and with Service.Streams the SSF transmitter (ssf.go). Every
// endpoint but the metadata authenticates the client against the registry.
type OAuth struct {
	svc     *Service
	clients ClientDirectory
	issuer  string
	verify  *assertionVerifier
	log     *slog.Logger
	// polls answers SSF polls: Service.Delivery, nil without it.
	polls Poller
	// longPoll bounds an SSF long poll (MaxLongPoll); verifications
	// holds min_verification_interval per SSF stream.
	longPoll      time.Duration
	verifications *ratelimit.KeyedLimiter
}

// OAuth endpoint paths.
const (
	PathToken      = "/oauth2/token"
	PathRevoke     = "/oauth2/revoke"
	PathIntrospect = "/oauth2/introspect"
	PathMetadata   = "/.well-known/oauth-authorization-server"
	PathJWKS       = "/.well-known/jwks.json"
)

// maxFormBytes bounds a request body; the largest valid one, a client
// assertion with a refresh token, is a few KiB.
const maxFormBytes = 64 << 10

// NewOAuth returns the OAuth endpoints of s for issuer, the public base URL
// of the OAuth listener without a trailing slash, exactly as it is the iss
// of access tokens (RFC 8414 section 3.3 compares them as strings). used
// remembers the client assertions' jti on every instance.
func NewOAuth(s *Service, clients ClientDirectory, issuer string, used ReplayCache, log *slog.Logger) *OAuth {
	o := &OAuth{svc: s, clients: clients, issuer: issuer, log: log,
		verify:   newAssertionVerifier([]string{issuer + PathToken, issuer}, s.Now, used),
		longPoll: MaxLongPoll, verifications: ratelimit.NewKeyedLimiter(1/VerificationInterval.Seconds(), 1, maxVerifyingStreams, s.Now)}
	// Tested for nil as the pointer it is: a nil *Engine in an interface
	// is not nil.
	if s.Delivery != nil {
		o.polls = s.Delivery
	}
	return o
}

// Handler returns the OAuth listener's routes.
func (o *OAuth) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathToken, o.token)
	mux.HandleFunc("POST "+PathRevoke, o.revoke)
	mux.HandleFunc("POST "+PathIntrospect, o.introspect)
	mux.HandleFunc("GET "+PathMetadata, o.metadata)
	mux.HandleFunc("GET "+PathJWKS, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", o.svc.Access.JWKSCacheControl(o.svc.Now()))
		w.Write(o.svc.Access.JWKS())
	})
	if o.svc.Streams != nil && o.svc.Outbox != nil {
		o.mountSSF(mux)
	}
	return mux
}

// oauthError is an error response of RFC 6749 section 5.2.
type oauthError struct {
	status      int
	code        string
	description string
	retryAfter  time.Duration
	// dpopNonce goes in the DPoP-Nonce header (RFC 9449 section 8).
	dpopNonce string
	cause     error // for the log, never for the caller
}

func (e *oauthError) Error() string {
	if e.cause != nil {
		return e.code + ": " + e.description + ": " + e.cause.Error()
	}
	return e.code + ": " + e.description
}

func (e *oauthError) Unwrap() error { return e.cause }

// Error codes of RFC 6749 section 5.2 beyond the contract's.
const (
	errInvalidClient        = "invalid_client"
	errUnsupportedGrantType = "unsupported_grant_type"
)

func badRequest(format string, args ...any) *oauthError {
	return &oauthError{status: http.StatusBadRequest, code: domain.EInvalidRequest, description: fmt.Sprintf(format, args...)}
}

// errClientAuth is every failed client authentication: which check failed
// goes to the log, not to the caller.
var errClientAuth = &oauthError{status: http.StatusUnauthorized, code: errInvalidClient, description: "client authentication failed"}

// oauthErrorOf maps a command's error to its OAuth response.
func oauthErrorOf(err error) *oauthError {
	var oe *oauthError
	if errors.As(err, &oe) {
		return oe
	}
	code := domain.ErrorCode(err)
	e := &oauthError{status: httpStatus(code), code: code, description: domain.ErrorMessage(err)}
	var de *domain.Error
	if errors.As(err, &de) && de.RetryAfterMs > 0 {
		e.retryAfter = time.Duration(de.RetryAfterMs) * time.Millisecond
		if de.RateLimited {
			e.status = http.StatusTooManyRequests
		}
	}
	if de != nil {
		e.dpopNonce = de.DPoPNonce
	}
	if code == domain.EInvalidClient {
		return errClientAuth
	}
	return e
}

// answerError answers err as RFC 6749 section 5.2 says, and logs the
// failures that are tokend's rather than the caller's, as the NATS
// endpoints do (Service.logFailure).
func (o *OAuth) answerError(w http.ResponseWriter, endpoint string, err error) {
	e := oauthErrorOf(err)
	switch {
	case e.status == http.StatusInternalServerError:
		o.log.Error("oauth request failed", "endpoint", endpoint, "err", err)
	case e.status == http.StatusServiceUnavailable:
		o.log.Warn("oauth request unavailable", "endpoint", endpoint, "err", err)
	}
	writeOAuthError(w, e)
}

// writeOAuthError answers with the JSON of RFC 6749 section 5.2; a client
// authentication failure also carries the challenge of section 5.2.
func writeOAuthError(w http.ResponseWriter, e *oauthError) {
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="tokend", error="invalid_client"`)
	}
	if e.dpopNonce != "" {
		w.Header().Set("DPoP-Nonce", e.dpopNonce)
	}
	if e.code == domain.EUseDPoPNonce {
		w.Header().Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="Authorization server requires nonce in DPoP proof"`)
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.FormatInt(int64((e.retryAfter+time.Second-1)/time.Second), 10))
	}
	noStore(w)
	writeJSON(w, e.status, map[string]string{"error": e.code, "error_description": e.description})
}

// noStore marks a response that holds tokens or depends on them (RFC 6749
// section 5.1).
func noStore(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
}

// form parses a POST body of application/x-www-form-urlencoded parameters,
// refusing repeated parameters (RFC 6749 section 3.2) other than those
// allowed to repeat.
func form(w http.ResponseWriter, r *http.Request, repeatable ...string) (map[string][]string, *oauthError) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		return nil, badRequest("the body must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return nil, badRequest("the body is not a valid form")
	}
	if len(r.URL.RawQuery) > 0 {
		return nil, badRequest("parameters go in the body, not the URL")
	}
	for k, v := range r.PostForm {
		if len(v) > 1 && !contains(repeatable, k) {
			return nil, badRequest("parameter %s given more than once", truncate(k))
		}
	}
	return r.PostForm, nil
}

// metadata is RFC 8414: exactly what this listener serves.
func (o *OAuth) metadata(w http.ResponseWriter, _ *http.Request) {
	methods := []string{string(domain.AuthSecretBasic), string(domain.AuthSecretPost), string(domain.AuthPrivateKeyJWT), string(domain.AuthNone)}
	algs := make([]string, len(assertionAlgs))
	for i, a := range assertionAlgs {
		algs[i] = string(a)
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	m := map[string]any{
		"issuer":                                o.issuer,
		"token_endpoint":                        o.issuer + PathToken,
		"revocation_endpoint":                   o.issuer + PathRevoke,
		"introspection_endpoint":                o.issuer + PathIntrospect,
		"jwks_uri":                              o.issuer + PathJWKS,
		"grant_types_supported":                 []string{"refresh_token", "client_credentials"},
		"response_types_supported":              []string{},
		"token_endpoint_auth_methods_supported": methods,
		"token_endpoint_auth_signing_alg_values_supported":      algs,
		"revocation_endpoint_auth_methods_supported":            methods,
		"revocation_endpoint_auth_signing_alg_values_supported": algs,
		// Introspection answers confidential clients only.
		"introspection_endpoint_auth_methods_supported":            methods[:3],
		"introspection_endpoint_auth_signing_alg_values_supported": algs,
		// The SSF receivers' scopes only: the families' scopes are each
		// client's own (RFC 8414 lets a server leave scopes out).
		"scopes_supported": domain.ReceiverScopes,
	}
	if o.svc.Tokens.DPoP != nil {
		m["dpop_signing_alg_values_supported"] = o.svc.Tokens.DPoP.AlgValues() // RFC 9449 section 5.1
	}
	writeJSON(w, http.StatusOK, m)
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
