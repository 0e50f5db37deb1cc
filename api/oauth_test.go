package api

import (
	"bytes"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tokend/tokend/domain"
)

// TestOAuthFailuresAreLogged: a server_error on an OAuth endpoint is
// logged at error level with the endpoint, an unavailable store at warn;
// the caller's own mistakes are not logged.
func TestOAuthFailuresAreLogged(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		log    string
	}{
		{errors.New("stream lost"), http.StatusInternalServerError, `level=ERROR msg="oauth request failed" endpoint=token err="stream lost"`},
		{domain.Errorf(domain.EServerError, "append failed"), http.StatusInternalServerError, `level=ERROR msg="oauth request failed" endpoint=token`},
		{domain.Errorf(domain.EUnavailable, "no stream"), http.StatusServiceUnavailable, `level=WARN msg="oauth request unavailable" endpoint=token`},
		{&domain.Error{Code: domain.EUnavailable, Message: "slow down", RetryAfterMs: 100, RateLimited: true}, http.StatusTooManyRequests, ""},
		{domain.Errorf(domain.EInvalidGrant, "no"), http.StatusBadRequest, ""},
		{errClientAuth, http.StatusUnauthorized, ""},
	} {
		var logs bytes.Buffer
		o := &OAuth{log: slog.New(slog.NewTextHandler(&logs, nil))}
		w := httptest.NewRecorder()
		o.answerError(w, "token", tc.err)
		if w.Code != tc.status {
			t.Errorf("%v: status %d, want %d", tc.err, w.Code, tc.status)
		}
		if tc.log == "" && logs.Len() > 0 || !strings.Contains(logs.String(), tc.log) {
			t.Errorf("%v: logged %q, want %q", tc.err, logs.String(), tc.log)
		}
	}
}
