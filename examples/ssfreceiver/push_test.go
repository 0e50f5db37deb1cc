package ssfreceiver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// push posts raw to h as a transmitter would (RFC 8935 section 2.1) and
// returns the status and the error it answered.
func push(t *testing.T, h http.Handler, auth, contentType, raw string) (int, Error) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/events", strings.NewReader(raw))
	req.Header.Set("Authorization", auth)
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var e Error
	if rec.Code == http.StatusBadRequest {
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("400 as %q", ct)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Description == "" {
			t.Fatalf("400 body %q: %v", rec.Body, err)
		}
	}
	return rec.Code, e
}

// TestPushHandler: the push endpoint takes a verified SET once (202, also
// for its redeliveries), and answers everything else 400 with the RFC 8935
// error code, handling nothing.
func TestPushHandler(t *testing.T) {
	v, _ := newTestVerifier(t)
	var handled []SET
	var answer error
	h := NewPushHandler(v, "Bearer inbox", func(_ context.Context, set SET) error {
		if answer != nil {
			return answer
		}
		handled = append(handled, set)
		return nil
	})
	good := sign(t, goodHeader(), goodClaims(), testKey)
	const ct = "application/secevent+jwt"

	for _, tc := range []struct {
		name, auth, contentType, raw string
		want                         string
	}{
		{"no Authorization", "", ct, good, ErrAuthenticationFailed},
		{"another Authorization", "Bearer inbox2", ct, good, ErrAuthenticationFailed},
		{"as JSON", "Bearer inbox", "application/json", good, ErrInvalidRequest},
		{"not a JWS", "Bearer inbox", ct, "junk", ErrInvalidRequest},
		{"another audience", "Bearer inbox", ct, func() string {
			c := goodClaims()
			c["aud"] = "receiver-2"
			return sign(t, goodHeader(), c, testKey)
		}(), ErrInvalidAudience},
	} {
		if code, e := push(t, h, tc.auth, tc.contentType, tc.raw); code != http.StatusBadRequest || e.Code != tc.want {
			t.Errorf("%s: %d %+v, want 400 %s", tc.name, code, e, tc.want)
		}
	}
	if len(handled) != 0 {
		t.Fatalf("handled refused SETs: %+v", handled)
	}

	if code, _ := push(t, h, "Bearer inbox", ct+"; charset=utf-8", good); code != http.StatusAccepted || len(handled) != 1 {
		t.Fatalf("a good SET: %d, handled %d", code, len(handled))
	}
	if code, _ := push(t, h, "Bearer inbox", ct, good); code != http.StatusAccepted || len(handled) != 1 {
		t.Fatalf("its redelivery: %d, handled %d", code, len(handled))
	}

	// The handler's refusal is the answer; any other failure asks for
	// the SET again.
	c := goodClaims()
	c["jti"] = "second"
	second := sign(t, goodHeader(), c, testKey)
	answer = &Error{Code: ErrInvalidState, Description: "not the state asked for"}
	if code, e := push(t, h, "Bearer inbox", ct, second); code != http.StatusBadRequest || e.Code != ErrInvalidState {
		t.Fatalf("refused by the handler: %d %+v", code, e)
	}
	answer = errors.New("database down")
	if code, _ := push(t, h, "Bearer inbox", ct, second); code != http.StatusServiceUnavailable {
		t.Fatalf("handler failing: %d", code)
	}
	answer = nil
	if code, _ := push(t, h, "Bearer inbox", ct, second); code != http.StatusAccepted || len(handled) != 2 {
		t.Fatalf("taken once the handler works: %d, handled %d", code, len(handled))
	}
}
