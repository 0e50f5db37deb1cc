package api

import (
	"context"
	"net/http"
	"unicode/utf8"

	"github.com/tokend/tokend/clientaddr"
	"github.com/tokend/tokend/domain"
)

type clientAddrKey struct{}

// WithClientAddress resolves where each request came from under policy
// before next serves it, so the audit trail and the logs name the client
// behind a trusted proxy, and the proxy beside it.
func WithClientAddress(policy clientaddr.Policy, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := policy.Resolve(r.RemoteAddr, r.Header)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientAddrKey{}, addr)))
	})
}

// clientAddress is where r came from: as WithClientAddress resolved it, or
// else its peer, trusting no proxy.
func clientAddress(r *http.Request) clientaddr.Addr {
	if a, ok := r.Context().Value(clientAddrKey{}).(clientaddr.Addr); ok {
		return a
	}
	return clientaddr.Policy{}.Resolve(r.RemoteAddr, r.Header)
}

// logAddress is clientAddress as log attributes: remote, and proxy when
// the request came through one.
func logAddress(r *http.Request) []any {
	a := clientAddress(r)
	if a.Proxy == "" {
		return []any{"remote", a.Client}
	}
	return []any{"remote", a.Client, "proxy", a.Proxy}
}

// requestContext is what the audit trail keeps of an HTTP caller: its
// address (ip), the trusted proxy it came through (proxy_ip), and its
// user agent. An entry the contract's limits refuse is left out, not the
// whole context.
func requestContext(r *http.Request) domain.Context {
	a := clientAddress(r)
	c := domain.Context{}
	add := func(k, v string) {
		if v != "" && domain.ValidateContext(domain.Context{k: v}) == nil {
			c[k] = v
		}
	}
	add("ip", a.Client)
	add("proxy_ip", a.Proxy)
	ua := r.UserAgent()
	if len(ua) > domain.MaxContextValue {
		n := domain.MaxContextValue
		for n > 0 && !utf8.RuneStart(ua[n]) {
			n-- // not inside a character
		}
		ua = ua[:n]
	}
	add("user_agent", ua)
	if domain.ValidateContext(c) != nil {
		delete(c, "user_agent") // the addresses matter more
	}
	return c
}
