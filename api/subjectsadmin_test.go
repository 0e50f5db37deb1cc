package api

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/pii"
)

// eraseRequest asks for an erasure over nc and returns the reply.
func eraseRequest(t *testing.T, nc *nats.Conn, body string) *nats.Msg {
	t.Helper()
	m, err := nc.Request("tokens."+SubjectSubjectsErase, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestEraseRefusesIncompleteRequests: an erasure names the subject, why
// (a request reference) and who asks; nothing is erased otherwise.
func TestEraseRefusesIncompleteRequests(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	js, _ := jetstream.New(nc)
	k, err := pii.NewKeys([]byte("0123456789abcdef0123456789abcdef-api-test"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pii.OpenStore(t.Context(), js, k, pii.Config{Replicas: 1, CacheSize: 16, MarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(keys.Stop)
	// Protection on: only the request itself can be at fault.
	startLoggingInstance(t, url, io.Discard, func(s *Service) { s.Personal = keys })

	for body, want := range map[string]string{
		`{"reason":"DSR-1","by":"dpo"}`:                      "subject is required",
		`{"subject":"alice","by":"dpo"}`:                     "reason is required",
		`{"subject":"alice","reason":"DSR-1"}`:               "by is required",
		`{"subject":"alice","reason":"DSR-1","by":"\u0007"}`: "by is required",
		`{"subject":"alice","reason":"DSR-1","by":"dpo"`:     "",
	} {
		m := eraseRequest(t, nc, body)
		if m.Header.Get(micro.ErrorCodeHeader) != "400" || !strings.Contains(string(m.Data), `"error":"invalid_request"`) ||
			!strings.Contains(string(m.Data), want) {
			t.Errorf("%s: %s, want invalid_request: %s", body, m.Data, want)
		}
	}
}

// TestEraseWithoutProtection: without --pii-key-file personal data is in
// clear and cannot be erased; the refusal says which flag is missing.
func TestEraseWithoutProtection(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	startLoggingInstance(t, url, io.Discard)
	m := eraseRequest(t, eventstest.MustConnect(t, url), `{"subject":"alice","reason":"DSR-1","by":"dpo"}`)
	if m.Header.Get(micro.ErrorCodeHeader) != "400" || !strings.Contains(string(m.Data), `"error":"invalid_request"`) ||
		!strings.Contains(string(m.Data), "--pii-key-file") {
		t.Fatalf("erase without protection: %s", m.Data)
	}
}
