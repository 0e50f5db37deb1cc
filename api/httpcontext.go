package api

import (
	"net/http"
	"strings"

	"github.com/tokend/tokend/domain"
)

// requestContext is what the audit trail keeps of an HTTP caller.
func requestContext(r *http.Request) domain.Context {
	c := domain.Context{}
	if host, _, ok := strings.Cut(r.RemoteAddr, ":"); ok && host != "" {
		c["ip"] = strings.Trim(host, "[]")
	}
	if ua := r.UserAgent(); ua != "" {
		c["user_agent"] = ua[:min(len(ua), domain.MaxContextValue)]
	}
	if domain.ValidateContext(c) != nil {
		delete(c, "user_agent") // not printable, say
	}
	return c
}
