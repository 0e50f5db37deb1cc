package signals

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
)

func ptr[T any](v T) *T { return &v }

func TestPatchValidatesReceiverFields(t *testing.T) {
	tests := []struct {
		name      string
		given     Stream // the stream before
		withReq   StreamRequest
		wantErr   string // in the invalid_request message; "" for success
		wantDeliv Delivery
	}{
		{name: "no delivery is poll (SSF 8.1.1.1)", given: Stream{Receiver: "r"},
			wantDeliv: Delivery{Method: DeliveryPoll}},
		{name: "push to https", given: Stream{Receiver: "r"},
			withReq:   StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf", AuthorizationHeader: "Bearer abc"}},
			wantDeliv: Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf", AuthorizationHeader: "Bearer abc"}},
		{name: "push to http on loopback", given: Stream{Receiver: "r"},
			withReq:   StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "http://127.0.0.1:8080/events"}},
			wantDeliv: Delivery{Method: DeliveryPush, EndpointURL: "http://127.0.0.1:8080/events"}},
		{name: "push to http on ::1", given: Stream{Receiver: "r"},
			withReq:   StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "http://[::1]:8080/events"}},
			wantDeliv: Delivery{Method: DeliveryPush, EndpointURL: "http://[::1]:8080/events"}},
		{name: "push to http elsewhere", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "http://rp.example/ssf"}}, wantErr: "https"},
		{name: "push to a host named like loopback", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "http://127.0.0.1.rp.example/ssf"}}, wantErr: "https"},
		{name: "push without endpoint", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush}}, wantErr: "endpoint_url"},
		{name: "push to a relative URL", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "/events"}}, wantErr: "absolute"},
		{name: "push with credentials in the URL", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "https://u:p@rp.example/ssf"}}, wantErr: "user information"},
		{name: "push with a fragment", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf#x"}}, wantErr: "fragment"},
		{name: "push with a header that splits", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf", AuthorizationHeader: "Bearer a\r\nX-Evil: 1"}},
			wantErr: "authorization_header"},
		{name: "push with a secret_ref", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf", SecretRef: "s"}}, wantErr: "secret_ref"},
		{name: "poll drops a receiver's endpoint_url (the transmitter's)", given: Stream{Receiver: "r"},
			withReq:   StreamRequest{Delivery: &Delivery{Method: DeliveryPoll, EndpointURL: "https://rp.example/poll"}},
			wantDeliv: Delivery{Method: DeliveryPoll}},
		{name: "poll with an authorization header", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPoll, AuthorizationHeader: "Bearer x"}}, wantErr: "authorization_header"},
		{name: "an unknown method", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: "urn:example:carrier-pigeon"}}, wantErr: "not supported"},
		{name: "a receiver asking for a webhook", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook", SecretRef: "s1"}}, wantErr: "operator"},
		{name: "an operator's webhook", given: Stream{CreatedBy: "alice"},
			withReq:   StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook", SecretRef: "s1"}},
			wantDeliv: Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook", SecretRef: "s1"}},
		{name: "a webhook without its secret", given: Stream{CreatedBy: "alice"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryWebhook, EndpointURL: "https://siem.example/hook"}}, wantErr: "secret_ref"},
		{name: "a webhook that is push", given: Stream{CreatedBy: "alice"},
			withReq: StreamRequest{Delivery: &Delivery{Method: DeliveryPush, EndpointURL: "https://siem.example/hook"}}, wantErr: "webhook"},
		{name: "a description with a control character", given: Stream{Receiver: "r"},
			withReq: StreamRequest{Description: ptr("a\x1b[2Jb")}, wantErr: "printable"},
		{name: "an event type too long", given: Stream{Receiver: "r"},
			withReq: StreamRequest{EventsRequested: []string{strings.Repeat("u", 300)}}, wantErr: "events_requested"},
	}
	for _, tc := range tests {
		st := tc.given
		err := st.Patch(tc.withReq)
		switch {
		case tc.wantErr != "":
			if domain.ErrorCode(err) != domain.EInvalidRequest || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: %v, want invalid_request about %s", tc.name, err, tc.wantErr)
			}
			if !reflect.DeepEqual(st, tc.given) {
				t.Errorf("%s: a refused patch changed the stream: %+v", tc.name, st)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case st.Delivery != tc.wantDeliv:
			t.Errorf("%s: delivery %+v, want %+v", tc.name, st.Delivery, tc.wantDeliv)
		}
	}
}

func TestEventsDeliveredAndDescription(t *testing.T) {
	st := Stream{Receiver: "r"}
	if err := st.Patch(StreamRequest{}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st.EventsDelivered, EventsSupported) || st.EventsRequested != nil {
		t.Fatalf("asking for nothing delivers %v (requested %v), want every supported event", st.EventsDelivered, st.EventsRequested)
	}
	req := []string{TypeSessionRevoked, "urn:example:unknown", TypeSessionRevoked, TypeVerification}
	if err := st.Patch(StreamRequest{EventsRequested: req}); err != nil {
		t.Fatal(err)
	}
	if want := []string{TypeSessionRevoked, TypeVerification}; !reflect.DeepEqual(st.EventsDelivered, want) {
		t.Fatalf("events_delivered %v, want %v", st.EventsDelivered, want)
	}
	if want := []string{TypeSessionRevoked, "urn:example:unknown", TypeVerification}; !reflect.DeepEqual(st.EventsRequested, want) {
		t.Fatalf("events_requested kept as %v, want %v (unknown ones ignored, not refused)", st.EventsRequested, want)
	}
	if err := st.Patch(StreamRequest{EventsRequested: []string{}}); err != nil || len(st.EventsDelivered) != 0 || st.EventsDelivered == nil {
		t.Fatalf("an empty events_requested: delivered %#v, %v", st.EventsDelivered, err)
	}
	long := strings.Repeat("é", MaxDescriptionBytes) // two bytes each
	if err := st.Patch(StreamRequest{Description: &long}); err != nil {
		t.Fatal(err)
	}
	if len(st.Description) != MaxDescriptionBytes || !strings.HasPrefix(long, st.Description) {
		t.Fatalf("description cut to %d bytes, want %d on a character boundary", len(st.Description), MaxDescriptionBytes)
	}

	// A patch keeps what it does not name; a replacement resets it.
	st = Stream{Receiver: "r"}
	push := &Delivery{Method: DeliveryPush, EndpointURL: "https://rp.example/ssf"}
	if err := st.Patch(StreamRequest{Delivery: push, EventsRequested: []string{TypeSessionRevoked}, Description: ptr("d")}); err != nil {
		t.Fatal(err)
	}
	patched := st
	if err := patched.Patch(StreamRequest{Description: ptr("e")}); err != nil {
		t.Fatal(err)
	}
	if patched.Delivery != *push || !reflect.DeepEqual(patched.EventsRequested, []string{TypeSessionRevoked}) || patched.Description != "e" {
		t.Fatalf("after a patch of the description: %+v", patched)
	}
	replaced := st
	if err := replaced.Replace(StreamRequest{Description: ptr("e")}); err != nil {
		t.Fatal(err)
	}
	if replaced.Delivery != (Delivery{Method: DeliveryPoll}) || replaced.EventsRequested != nil ||
		!reflect.DeepEqual(replaced.EventsDelivered, EventsSupported) || replaced.Description != "e" {
		t.Fatalf("after a replacement with the description alone: %+v", replaced)
	}
}

func TestStatusAndSubjects(t *testing.T) {
	st := Stream{Status: StatusEnabled}
	if changed, err := st.SetStatus(StatusPaused, "maintenance"); !changed || err != nil || st.Status != StatusPaused || st.Reason != "maintenance" {
		t.Fatalf("pause: %v, %v, %+v", changed, err, st)
	}
	if changed, err := st.SetStatus(StatusPaused, "maintenance"); changed || err != nil {
		t.Fatalf("pausing a paused stream changed it: %v, %v", changed, err)
	}
	for _, bad := range []struct {
		status Status
		reason string
	}{{"stopped", ""}, {StatusEnabled, "line\nbreak"}, {StatusEnabled, strings.Repeat("r", 300)}} {
		if _, err := st.SetStatus(bad.status, bad.reason); domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("status %q reason %q: %v", bad.status, bad.reason, err)
		}
	}
	if st.Status != StatusPaused {
		t.Fatal("a refused status changed the stream")
	}
	for _, tc := range []struct {
		from, to                      Status
		holds, drops, restartsFromNow bool
	}{
		{StatusEnabled, StatusPaused, true, false, false},
		{StatusPaused, StatusEnabled, false, false, false},
		{StatusEnabled, StatusDisabled, false, true, false},
		{StatusPaused, StatusDisabled, false, true, false},
		{StatusDisabled, StatusEnabled, false, false, true},
		{StatusDisabled, StatusPaused, true, false, true},
		{StatusDisabled, StatusDisabled, false, false, false},
	} {
		c := StatusChange{From: tc.from, To: tc.to}
		if c.Holds() != tc.holds || c.DropsConsumer() != tc.drops || c.RestartsConsumer() != tc.restartsFromNow {
			t.Errorf("%s -> %s: holds %v, drops %v, restarts %v", tc.from, tc.to, c.Holds(), c.DropsConsumer(), c.RestartsConsumer())
		}
	}

	user := IssSub("https://tokend.example", "user-42")
	if changed, err := st.RemoveSubject(user); !changed || err != nil || len(st.ExcludedSubjects) != 1 {
		t.Fatalf("remove: %v, %v, %v", changed, err, st.ExcludedSubjects)
	}
	if changed, _ := st.RemoveSubject(IssSub("https://tokend.example", "user-42")); changed {
		t.Fatal("removing a removed subject changed the stream")
	}
	if changed, _ := st.AddSubject(IssSub("https://tokend.example", "user-7")); changed {
		t.Fatal("adding a subject that was never removed changed the stream")
	}
	if changed, err := st.AddSubject(user); !changed || err != nil || st.ExcludedSubjects != nil {
		t.Fatalf("adding back: %v, %v, %v", changed, err, st.ExcludedSubjects)
	}
	if _, err := st.RemoveSubject(Subject{Format: "nope"}); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("removing a malformed subject: %v", err)
	}
	for i := range MaxExcludedSubjects {
		if _, err := st.RemoveSubject(Opaque("s" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26)))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.RemoveSubject(Opaque("one-too-many")); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("subject %d: %v", MaxExcludedSubjects+1, err)
	}
}

func TestStreamWants(t *testing.T) {
	user := IssSub("https://tokend.example", "user-42")
	session := Opaque("fam-1")
	about := func(u Subject) Subject { return Subject{Format: FormatComplex, User: &u, Session: &session} }
	st := Stream{ID: "s1", EventsDelivered: []string{TypeSessionRevoked, TypeVerification},
		ExcludedSubjects: []Subject{IssSub("https://tokend.example", "user-7")}}
	tests := []struct {
		name string
		sig  Signal
		want bool
	}{
		{"a delivered type", Signal{Type: TypeSessionRevoked, Subject: about(user)}, true},
		{"a type not delivered", Signal{Type: TypeCredentialCompromise, Subject: about(user)}, false},
		{"a removed subject", Signal{Type: TypeSessionRevoked, Subject: about(IssSub("https://tokend.example", "user-7"))}, false},
		{"this stream's verification", Signal{Type: TypeVerification, Subject: Opaque("s1"), Visibility: Visibility{Stream: "s1"}}, true},
		{"another stream's verification", Signal{Type: TypeVerification, Subject: Opaque("s2"), Visibility: Visibility{Stream: "s2"}}, false},
		{"this stream's update, never requested", Signal{Type: TypeStreamUpdated, Subject: Opaque("s1"), Visibility: Visibility{Stream: "s1"}}, true},
	}
	for _, tc := range tests {
		if got := st.Wants(tc.sig); got != tc.want {
			t.Errorf("%s: Wants = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestConfigAsTheReceiverReadsIt(t *testing.T) {
	st := Stream{ID: "0123456789abcdef0123456789abcdef", Audience: []string{"rp-1"}, Delivery: Delivery{Method: DeliveryPoll},
		EventsDelivered: Delivered(nil), Receiver: "rp-1", Status: StatusEnabled, CreatedAt: time.Now()}
	tr := Transmitter{Issuer: "https://tokend.example", MinVerificationInterval: time.Minute,
		PollURL: func(id string) string { return "https://tokend.example/ssf/poll/" + id }}
	data, err := json.Marshal(st.Config(tr))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got["iss"] != "https://tokend.example" || got["aud"] != "rp-1" || got["stream_id"] != st.ID ||
		got["min_verification_interval"] != float64(60) || got["delivery"].(map[string]any)["endpoint_url"] != "https://tokend.example/ssf/poll/"+st.ID {
		t.Fatalf("config %s", data)
	}
	for _, own := range []string{"receiver", "status", "excluded_subjects", "created_at", "events_requested"} {
		if _, ok := got[own]; ok {
			t.Errorf("the SSF configuration shows %s: %s", own, data)
		}
	}
	if st.Delivery.EndpointURL != "" {
		t.Fatal("Config changed the stored stream")
	}
	st.Audience = []string{"rp-1/web", "rp-1/mobile"}
	data, _ = json.Marshal(st.Config(tr))
	if !strings.Contains(string(data), `"aud":["rp-1/web","rp-1/mobile"]`) {
		t.Fatalf("two audiences: %s", data)
	}
}
