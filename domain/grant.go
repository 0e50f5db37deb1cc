package domain

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Input limits. They bound the size of every event and keep hostile input
// from growing state.
const (
	MaxNameBytes     = 256 // subject, client_id, reason
	MaxScopes        = 64
	MaxScopeBytes    = 128
	MaxAudiences     = 16
	MaxAudienceBytes = 512
	MaxContextKeys   = 16
	MaxContextKey    = 64
	MaxContextValue  = 512
	// MaxContextBytes bounds a whole context (keys and values): it is copied
	// into every event of a request, and 16 values of 512 bytes made events
	// of tens of KiB.
	MaxContextBytes = 1024
)

// Context is request metadata recorded for audit only (ip, user_agent, …).
type Context map[string]string

// ParseScope splits a space-separated scope string (RFC 6749 section 3.3)
// into a set, keeping first-seen order and dropping repeats. It returns an
// EInvalidRequest error for characters outside the RFC's set or too many scopes.
func ParseScope(s string) ([]string, error) {
	fields := strings.Split(s, " ")
	out := make([]string, 0, len(fields))
	seen := make(map[string]bool, len(fields))
	for _, f := range fields {
		if f == "" {
			continue
		}
		if len(f) > MaxScopeBytes || !validScopeToken(f) {
			return nil, Errorf(EInvalidRequest, "scope %q is not a valid scope token", truncate(f))
		}
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
		if len(out) > MaxScopes {
			return nil, Errorf(EInvalidRequest, "more than %d scopes", MaxScopes)
		}
	}
	return out, nil
}

// validScopeToken checks RFC 6749's scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
func validScopeToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// ScopeString joins a scope set for the wire.
func ScopeString(scopes []string) string { return strings.Join(scopes, " ") }

// Subset reports whether every scope in req is in grant.
func Subset(req, grant []string) bool {
	for _, r := range req {
		if !contains(grant, r) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ValidateAudiences checks a family's resource list (RFC 8707) and returns it
// without repeats, or an EInvalidRequest error.
func ValidateAudiences(auds []string) ([]string, error) {
	if len(auds) > MaxAudiences {
		return nil, Errorf(EInvalidRequest, "more than %d audiences", MaxAudiences)
	}
	out := make([]string, 0, len(auds))
	for _, a := range auds {
		if a == "" || len(a) > MaxAudienceBytes || strings.ContainsFunc(a, func(r rune) bool { return r <= ' ' || r == 0x7f }) || !utf8.ValidString(a) {
			return nil, Errorf(EInvalidRequest, "audience %q is not a valid resource identifier", truncate(a))
		}
		if !contains(out, a) {
			out = append(out, a)
		}
	}
	return out, nil
}

// ValidateName checks a subject, client id or reason: 1..256 bytes of
// printable UTF-8. field names the field in the EInvalidRequest error.
func ValidateName(field, s string) error {
	if s == "" {
		return Errorf(EInvalidRequest, "%s is required", field)
	}
	if len(s) > MaxNameBytes {
		return Errorf(EInvalidRequest, "%s is longer than %d bytes", field, MaxNameBytes)
	}
	if !printable(s) {
		return Errorf(EInvalidRequest, "%s must be printable UTF-8", field)
	}
	return nil
}

// ValidateContext checks audit context: a few short printable entries, at
// most MaxContextBytes in all.
func ValidateContext(c Context) error {
	if len(c) > MaxContextKeys {
		return Errorf(EInvalidRequest, "context has more than %d entries", MaxContextKeys)
	}
	size := 0
	for k, v := range c {
		if size += len(k) + len(v); size > MaxContextBytes {
			return Errorf(EInvalidRequest, "context is larger than %d bytes", MaxContextBytes)
		}
		if k == "" || len(k) > MaxContextKey || !printable(k) {
			return Errorf(EInvalidRequest, "context key %q is not valid", truncate(k))
		}
		if len(v) > MaxContextValue || (v != "" && !printable(v)) {
			return Errorf(EInvalidRequest, "context value of %q is longer than %d bytes or not printable", truncate(k), MaxContextValue)
		}
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// truncate keeps error messages short and printable whatever the input was.
func truncate(s string) string {
	if len(s) > 40 {
		s = s[:40]
	}
	return strings.ToValidUTF8(s, "?")
}
