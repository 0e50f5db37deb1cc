package api

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tokend/tokend/clientaddr"
	"github.com/tokend/tokend/domain"
)

// contextOf serves one request through handler (wrapped by
// WithClientAddress under policy, unless nil) and returns the audit
// context the handler saw.
func contextOf(t *testing.T, policy *clientaddr.Policy, remoteAddr string, header http.Header) domain.Context {
	t.Helper()
	var got domain.Context
	var h http.Handler = http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = requestContext(r) })
	if policy != nil {
		h = WithClientAddress(*policy, h)
	}
	r := httptest.NewRequest(http.MethodPost, "/oauth2/token", nil)
	r.RemoteAddr, r.Header = remoteAddr, header
	h.ServeHTTP(httptest.NewRecorder(), r)
	return got
}

func sameContext(a, b domain.Context) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRequestContextPeer: the ip of a direct caller is its whole address,
// IPv6 included, and forwarding headers are believed from no one unless a
// policy says so.
func TestRequestContextPeer(t *testing.T) {
	ua := http.Header{"User-Agent": {"curl/8.5.0"}}
	xff := http.Header{"User-Agent": {"curl/8.5.0"}, "X-Forwarded-For": {"203.0.113.9"}}
	none := clientaddr.Policy{}
	for _, c := range []struct {
		name   string
		policy *clientaddr.Policy
		peer   string
		header http.Header
		want   domain.Context
	}{
		{"IPv4", nil, "192.0.2.1:5555", ua, domain.Context{"ip": "192.0.2.1", "user_agent": "curl/8.5.0"}},
		{"IPv6 loopback", nil, "[::1]:5555", ua, domain.Context{"ip": "::1", "user_agent": "curl/8.5.0"}},
		{"IPv6", &none, "[2001:db8::7]:443", ua, domain.Context{"ip": "2001:db8::7", "user_agent": "curl/8.5.0"}},
		{"zone", nil, "[fe80::1%eth0]:443", nil, domain.Context{"ip": "fe80::1%eth0"}},
		{"forwarded without a policy", nil, "127.0.0.1:5555", xff, domain.Context{"ip": "127.0.0.1", "user_agent": "curl/8.5.0"}},
		{"forwarded, no proxy trusted", &none, "127.0.0.1:5555", xff, domain.Context{"ip": "127.0.0.1", "user_agent": "curl/8.5.0"}},
	} {
		if got := contextOf(t, c.policy, c.peer, c.header); !sameContext(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestRequestContextBehindProxy: behind a trusted proxy the context holds
// the client's address as ip and the proxy's as proxy_ip.
func TestRequestContextBehindProxy(t *testing.T) {
	policy := clientaddr.Policy{Proxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	for _, c := range []struct {
		peer, xff string
		want      domain.Context
	}{
		{"127.0.0.1:5555", "203.0.113.9", domain.Context{"ip": "203.0.113.9", "proxy_ip": "127.0.0.1"}},
		{"[::1]:5555", "198.51.100.66, 2001:db8::7", domain.Context{"ip": "2001:db8::7", "proxy_ip": "::1"}},
		{"192.0.2.1:5555", "203.0.113.9", domain.Context{"ip": "192.0.2.1"}},
		{"127.0.0.1:5555", "not an address", domain.Context{"ip": "127.0.0.1"}},
	} {
		if got := contextOf(t, &policy, c.peer, http.Header{"X-Forwarded-For": {c.xff}}); !sameContext(got, c.want) {
			t.Errorf("peer %s, X-Forwarded-For %q: %v, want %v", c.peer, c.xff, got, c.want)
		}
	}
}

// TestRequestContextLongUserAgent: a user agent over the contract's limit
// is cut, on a character boundary, and kept.
func TestRequestContextLongUserAgent(t *testing.T) {
	long := strings.Repeat("a", domain.MaxContextValue-1) + "é and more"
	got := contextOf(t, nil, "192.0.2.1:5555", http.Header{"User-Agent": {long}})
	if ua := got["user_agent"]; ua != strings.Repeat("a", domain.MaxContextValue-1) || !utf8.ValidString(ua) || got["ip"] != "192.0.2.1" {
		t.Fatalf("context %q", got)
	}
}

// TestAuditGuardLogsTheClient: the audit listener's log names the client
// behind a trusted proxy, and the proxy, not the proxy alone.
func TestAuditGuardLogsTheClient(t *testing.T) {
	var logs bytes.Buffer
	guard := NewAuditGuard(nil, 1, slog.New(slog.NewTextHandler(&logs, nil)))
	policy := clientaddr.Policy{Proxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	h := WithClientAddress(policy, guard.Wrap(http.NotFoundHandler()))
	r := httptest.NewRequest(http.MethodGet, "/v1/audit", nil)
	r.RemoteAddr = "127.0.0.1:5555"
	r.Header.Set("X-Forwarded-For", "203.0.113.9")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized || !strings.Contains(logs.String(), "remote=203.0.113.9 proxy=127.0.0.1") {
		t.Fatalf("status %d, log %q", w.Code, logs.String())
	}
}
