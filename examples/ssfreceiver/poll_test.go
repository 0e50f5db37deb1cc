package ssfreceiver

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
)

// TestPollerAcknowledges: against a transmitter that records the polls,
// the poller verifies the SETs it gets, acknowledges those it took on the
// next poll (RFC 8936 section 2.4.3), reports those it refused in setErrs
// (section 2.4.4), and takes a redelivered SET once.
func TestPollerAcknowledges(t *testing.T) {
	v, _ := newTestVerifier(t)
	setFor := func(jti, aud string) string {
		c := goodClaims()
		c["jti"], c["aud"] = jti, aud
		return sign(t, goodHeader(), c, testKey)
	}
	batches := []map[string]string{
		{"a": setFor("a", testAudience), "b": setFor("b", "receiver-2"), "c": setFor("other", testAudience)},
		{"a": setFor("a", testAudience), "d": setFor("d", testAudience)}, // a again: at least once
		{},
	}
	var polls []pollRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req pollRequest
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "not an RFC 8936 poll", http.StatusBadRequest)
			return
		}
		polls = append(polls, req)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(pollResponse{Sets: batches[len(polls)-1]})
	}))
	defer srv.Close()

	r := &Receiver{api: srv.Client(), Verifier: v}
	var handled []string
	p, err := r.NewPoller(Stream{StreamID: "s1", Delivery: &Delivery{Method: DeliveryPoll, EndpointURL: srv.URL}},
		func(_ context.Context, set SET) error { handled = append(handled, set.JTI); return nil })
	if err != nil {
		t.Fatal(err)
	}
	p.MaxEvents = 10

	taken, _, err := p.Poll(t.Context(), true)
	if err != nil || len(taken) != 1 || taken[0].JTI != "a" {
		t.Fatalf("first poll: %+v %v", taken, err)
	}
	if first := polls[0]; !first.ReturnImmediately || first.MaxEvents == nil || *first.MaxEvents != 10 || len(first.Ack) != 0 || len(first.SetErrs) != 0 {
		t.Fatalf("first poll sent %+v", first)
	}
	taken, _, err = p.Poll(t.Context(), false)
	if err != nil || len(taken) != 1 || taken[0].JTI != "d" {
		t.Fatalf("second poll: %+v %v", taken, err)
	}
	second := polls[1]
	if second.ReturnImmediately || !slices.Equal(second.Ack, []string{"a"}) || len(second.SetErrs) != 2 ||
		second.SetErrs["b"].Code != ErrInvalidAudience || second.SetErrs["c"].Code != ErrInvalidRequest {
		t.Fatalf("second poll sent %+v", second)
	}
	if err := p.Acknowledge(t.Context()); err != nil {
		t.Fatal(err)
	}
	third := polls[2]
	if third.MaxEvents == nil || *third.MaxEvents != 0 || !slices.Equal(third.Ack, []string{"a", "d"}) || len(third.SetErrs) != 0 {
		t.Fatalf("acknowledgement sent %+v", third)
	}
	if !slices.Equal(handled, []string{"a", "d"}) {
		t.Fatalf("handled %v", handled)
	}
	if err := p.Acknowledge(t.Context()); err != nil || len(polls) != 3 {
		t.Fatalf("nothing to acknowledge: %v, %d polls", err, len(polls))
	}
}
