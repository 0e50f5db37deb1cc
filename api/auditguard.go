package api

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/tokend/tokend/domain"
)

// AuditGuard admits callers of the audit API, which exposes subjects, IP
// addresses and user agents: a caller needs a client certificate the TLS
// layer verified, or a bearer token listed by its SHA-256 hash. It also
// bounds how many audit requests run at once, so a burst of heavy queries
// cannot starve the instance.
type AuditGuard struct {
	tokens map[[sha256.Size]byte]string // token hash → caller name
	slots  chan struct{}
	log    *slog.Logger
}

// NewAuditGuard admits the holders of tokens (hash → name; may be empty
// when only client certificates are accepted), maxConcurrent at a time.
func NewAuditGuard(tokens map[[sha256.Size]byte]string, maxConcurrent int, log *slog.Logger) *AuditGuard {
	return &AuditGuard{tokens: tokens, slots: make(chan struct{}, maxConcurrent), log: log}
}

// ReadAuditTokens parses a bearer-token file: one "NAME sha256:HEX" per
// line, blank lines and #-comments ignored. Only hashes are kept at rest;
// the tokens are high-entropy, so a fast hash suffices.
func ReadAuditTokens(r io.Reader) (map[[sha256.Size]byte]string, error) {
	tokens := map[[sha256.Size]byte]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, hash, ok := strings.Cut(line, " ")
		hexHash, isSHA := strings.CutPrefix(strings.TrimSpace(hash), "sha256:")
		raw, err := hex.DecodeString(hexHash)
		if !ok || !isSHA || err != nil || len(raw) != sha256.Size || domain.ValidateName("name", name) != nil {
			return nil, fmt.Errorf("line %d: want NAME sha256:<64 hex digits>", n)
		}
		tokens[[sha256.Size]byte(raw)] = name
	}
	return tokens, sc.Err()
}

// HashAuditToken returns the line that admits token, for the tokens file.
func HashAuditToken(name, token string) string {
	sum := sha256.Sum256([]byte(token))
	return name + " sha256:" + hex.EncodeToString(sum[:])
}

// Wrap puts the guard in front of next.
func (g *AuditGuard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store") // refusals too: no cache may keep them
		caller, ok := g.caller(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tokend-audit"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthorized",
				"error_description": "the audit API needs a client certificate or a bearer token"})
			g.log.Warn("audit request refused: no valid credentials", append(logAddress(r), "path", r.URL.Path)...)
			return
		}
		select {
		case g.slots <- struct{}{}:
			defer func() { <-g.slots }()
		default:
			w.Header().Set("Retry-After", "1")
			writeError(w, &domain.Error{Code: domain.EUnavailable, Message: "too many audit requests at once, retry", RetryAfterMs: 1000})
			return
		}
		// Who read what is itself audit-worthy; the query string stays out
		// of the log because it names subjects.
		g.log.Info("audit request", append([]any{"caller", caller, "path", r.URL.Path}, logAddress(r)...)...)
		next.ServeHTTP(w, r)
	})
}

// caller names an authenticated caller: the subject of its verified client
// certificate, or the name its bearer token was registered under.
func (g *AuditGuard) caller(r *http.Request) (string, bool) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return "cert:" + r.TLS.VerifiedChains[0][0].Subject.CommonName, true
	}
	// The scheme is case-insensitive (RFC 7235 section 2.1).
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimLeft(token, " ")
	if !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	name, ok := g.tokens[sha256.Sum256([]byte(token))]
	return "token:" + name, ok
}
