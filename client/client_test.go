package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/events/eventstest"
)

// connect starts an in-process NATS server and returns a connection to it.
func connect(t *testing.T) *nats.Conn {
	t.Helper()
	return eventstest.MustConnect(t, eventstest.MustServer(t).ClientURL())
}

// respond answers every request on subject with fn's result.
func respond(t *testing.T, nc *nats.Conn, subject string, fn func(m *nats.Msg) *nats.Msg) {
	t.Helper()
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if err := m.RespondMsg(fn(m)); err != nil {
			t.Errorf("respond: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestIssueDecodesReply(t *testing.T) {
	nc := connect(t)
	var got wire.IssueRequest
	respond(t, nc, "tokens.cmd.issue", func(m *nats.Msg) *nats.Msg {
		if err := json.Unmarshal(m.Data, &got); err != nil {
			t.Errorf("request body: %v", err)
		}
		return &nats.Msg{Data: []byte(`{"refresh_token":"rt","family_id":"fam-1","token_type":"Bearer",
			"access_token":"at","expires_in":300,"scope":"a b","refresh_token_expires_at":"2026-12-06T10:00:00Z","seq":7}`)}
	})
	c := client.New(nc, "")
	if c.Prefix() != "tokens" {
		t.Fatalf("prefix = %q", c.Prefix())
	}
	reply, err := c.Issue(ctx(t), wire.IssueRequest{Subject: "user-42", ClientID: "web", Scope: "a b",
		Audience: []string{"https://api.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	want := wire.TokenReply{RefreshToken: "rt", FamilyID: "fam-1", TokenType: "Bearer", AccessToken: "at",
		ExpiresIn: 300, Scope: "a b", RefreshTokenExpiresAt: "2026-12-06T10:00:00Z", Seq: 7}
	if reply != want {
		t.Fatalf("reply = %+v, want %+v", reply, want)
	}
	if got.Subject != "user-42" || got.ClientID != "web" || len(got.Audience) != 1 {
		t.Fatalf("request = %+v", got)
	}
}

func TestPrefixAndRawRequest(t *testing.T) {
	nc := connect(t)
	respond(t, nc, "acme.query.audit", func(m *nats.Msg) *nats.Msg {
		return &nats.Msg{Data: append([]byte(`{"echo":`), append(m.Data, '}')...)}
	})
	respond(t, nc, "acme.keys", func(m *nats.Msg) *nats.Msg {
		if string(m.Data) != "{}" {
			t.Errorf("keys request = %q, want {}", m.Data)
		}
		return &nats.Msg{Data: []byte(`{"keys":[{"kid":"k1"}]}`)}
	})
	c := client.New(nc, "acme")
	var out struct {
		Echo struct {
			Limit int `json:"limit"`
		} `json:"echo"`
	}
	if err := c.Request(ctx(t), "query.audit", map[string]int{"limit": 3}, &out); err != nil {
		t.Fatal(err)
	}
	if out.Echo.Limit != 3 {
		t.Fatalf("echo = %+v", out)
	}
	var raw json.RawMessage
	if err := c.Request(ctx(t), "query.audit", json.RawMessage(`{"limit":4}`), &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw) != `{"echo":{"limit":4}}` {
		t.Fatalf("raw = %s", raw)
	}
	keys, err := c.Keys(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if string(keys) != `{"keys":[{"kid":"k1"}]}` {
		t.Fatalf("keys = %s", keys)
	}
}

// TestErrorFromMicro answers like tokend does, through nats micro.
func TestErrorFromMicro(t *testing.T) {
	nc := connect(t)
	svc, err := micro.AddService(nc, micro.Config{Name: "tokens", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	replies := map[string]wire.ErrorReply{
		"refresh": {Error: "invalid_grant", Description: "refresh token is not valid"},
		"revoke":  {Error: "temporarily_unavailable", Description: "overloaded", RetryAfterMs: 250},
	}
	status := map[string]string{"refresh": "400", "revoke": "503"}
	for name, body := range replies {
		err := svc.AddEndpoint(name, micro.HandlerFunc(func(r micro.Request) {
			data, _ := json.Marshal(body)
			_ = r.Error(status[name], body.Description, data)
		}), micro.WithEndpointSubject("tokens.cmd."+name))
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := client.New(nc, "tokens")

	_, err = c.Refresh(ctx(t), wire.RefreshRequest{RefreshToken: "x", ClientID: "web"})
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %T %v, want *client.Error", err, err)
	}
	if *e != (client.Error{Code: "invalid_grant", Description: "refresh token is not valid", Status: "400"}) {
		t.Fatalf("error = %+v", *e)
	}
	if e.Error() != "invalid_grant: refresh token is not valid" {
		t.Fatalf("Error() = %q", e.Error())
	}
	if client.IsRetryable(err) {
		t.Fatal("invalid_grant must not be retryable")
	}

	fam := "fam-1"
	_, err = c.Revoke(ctx(t), wire.RevokeRequest{FamilyID: &fam})
	if !errors.As(err, &e) || e.Code != "temporarily_unavailable" || e.RetryAfterMs != 250 || e.Status != "503" {
		t.Fatalf("err = %#v", err)
	}
	if e.RetryAfter() != 250*time.Millisecond {
		t.Fatalf("RetryAfter = %v", e.RetryAfter())
	}
	if !client.IsRetryable(err) || !client.IsRetryable(fmt.Errorf("wrapped: %w", err)) {
		t.Fatal("temporarily_unavailable must be retryable")
	}
}

// TestErrorHeadersOnly covers an error answer whose body is not the contract's
// JSON: the headers still make it an *Error.
func TestErrorHeadersOnly(t *testing.T) {
	nc := connect(t)
	respond(t, nc, "tokens.cmd.issue", func(*nats.Msg) *nats.Msg {
		m := nats.NewMsg("")
		m.Header.Set(micro.ErrorCodeHeader, "500")
		m.Header.Set(micro.ErrorHeader, "boom")
		m.Data = []byte("not json")
		return m
	})
	_, err := client.New(nc, "").Issue(ctx(t), wire.IssueRequest{Subject: "s", ClientID: "c"})
	var e *client.Error
	if !errors.As(err, &e) || *e != (client.Error{Code: "server_error", Description: "boom", Status: "500"}) {
		t.Fatalf("err = %#v", err)
	}
	if !client.IsRetryable(err) {
		t.Fatal("server_error must be retryable")
	}
}

func TestNoResponders(t *testing.T) {
	nc := connect(t)
	_, err := client.New(nc, "").Issue(ctx(t), wire.IssueRequest{Subject: "s", ClientID: "c"})
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("err = %v, want no responders", err)
	}
	var e *client.Error
	if errors.As(err, &e) {
		t.Fatal("a transport failure is not a *client.Error")
	}
	if !client.IsRetryable(err) {
		t.Fatal("no responders must be retryable")
	}
}

func TestTimeout(t *testing.T) {
	nc := connect(t)
	sub, err := nc.SubscribeSync("tokens.keys") // subscribed, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := client.New(nc, "")
	c.Timeout = 50 * time.Millisecond
	_, err = c.Keys(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) || !client.IsRetryable(err) {
		t.Fatalf("err = %v, want a retryable timeout", err)
	}
}

func TestIsRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("x"), false},
		{context.Canceled, false},
		{nats.ErrTimeout, true},
		{&client.Error{Code: "invalid_request"}, false},
		{&client.Error{Code: "not_found"}, false},
	} {
		if got := client.IsRetryable(tc.err); got != tc.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestQueries(t *testing.T) {
	nc := connect(t)
	var mu sync.Mutex
	requests := map[string]map[string]any{}
	answer := func(subject, body string) {
		respond(t, nc, subject, func(m *nats.Msg) *nats.Msg {
			var req map[string]any
			if err := json.Unmarshal(m.Data, &req); err != nil {
				t.Errorf("%s request: %v", subject, err)
			}
			mu.Lock()
			requests[subject] = req
			mu.Unlock()
			return &nats.Msg{Data: []byte(body)}
		})
	}
	got := func(subject string) map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return requests[subject]
	}
	answer("tokens.query.introspect", `{"active":true,"family_id":"fam-1","sub":"user-42","client_id":"web",
		"scope":"","aud":["https://a"],"exp":1800000000,"iat":1700000000,"token_type":"refresh_token","as_of_seq":9}`)
	answer("tokens.query.family", `{"family_id":"fam-1","subject":"user-42","client_id":"web","scope":"a b",
		"audience":["https://a"],"status":"revoked","generation":2,"created_at":"2026-01-02T10:00:00Z",
		"last_used_at":"2026-01-02T10:05:00Z","expires_at":"2026-01-16T10:05:00Z","revoked_at":"2026-01-02T10:09:00Z",
		"revoked_reason":"replay_detected","tokens":[{"generation":1,"status":"rotated","issued_at":"2026-01-02T10:00:00Z",
		"rotated_at":"2026-01-02T10:05:00Z"},{"generation":2,"status":"revoked","issued_at":"2026-01-02T10:05:00Z","rotated_at":null}],"as_of_seq":9}`)
	answer("tokens.query.audit", `{"events":[{"seq":7,"id":"e7","type":"token.replay_detected","time":"2026-01-02T10:09:00Z",
		"family_id":"fam-1","subject":"user-42","client_id":"web","generation":2,"reason":"","context":{"ip":"192.0.2.66"}}],
		"next_after_seq":7,"as_of_seq":9}`)
	c := client.New(nc, "")

	in, err := c.Introspect(ctx(t), wire.IntrospectRequest{RefreshToken: "rt", MinSeq: 5})
	if err != nil {
		t.Fatal(err)
	}
	if !in.Active || in.FamilyID != "fam-1" || in.Scope == nil || *in.Scope != "" || in.Exp != 1800000000 || in.AsOfSeq != 9 {
		t.Fatalf("introspection = %+v", in)
	}
	if req := got("tokens.query.introspect"); req["refresh_token"] != "rt" || req["min_seq"] != 5.0 {
		t.Fatalf("introspect request = %v", req)
	}

	fam, err := c.Family(ctx(t), wire.FamilyRequest{FamilyID: "fam-1"})
	if err != nil {
		t.Fatal(err)
	}
	if fam.Status != "revoked" || len(fam.Tokens) != 2 || fam.Tokens[0].RotatedAt == nil || fam.Tokens[1].RotatedAt != nil ||
		fam.RevokedAt == nil || !fam.RevokedAt.Equal(time.Date(2026, 1, 2, 10, 9, 0, 0, time.UTC)) {
		t.Fatalf("family = %+v", fam)
	}
	if req := got("tokens.query.family"); req["family_id"] != "fam-1" {
		t.Fatalf("family request = %v", req)
	}

	limit := 1
	page, err := c.Audit(ctx(t), wire.AuditRequest{FamilyID: "fam-1", Types: []string{"token.replay_detected"}, Limit: &limit, AfterSeq: 6})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 1 || page.Events[0].Seq != 7 || page.Events[0].Type != "token.replay_detected" ||
		string(page.Events[0].Context) != `{"ip":"192.0.2.66"}` || page.NextAfterSeq != 7 || page.AsOfSeq != 9 {
		t.Fatalf("page = %+v", page)
	}
	req := got("tokens.query.audit")
	if types, _ := req["types"].([]any); req["family_id"] != "fam-1" || req["limit"] != 1.0 || req["after_seq"] != 6.0 ||
		len(types) != 1 || types[0] != "token.replay_detected" {
		t.Fatalf("audit request = %v", req)
	}
}

func TestFamilyNotFound(t *testing.T) {
	nc := connect(t)
	respond(t, nc, "tokens.query.family", func(*nats.Msg) *nats.Msg {
		m := nats.NewMsg("")
		m.Header.Set(micro.ErrorCodeHeader, "404")
		m.Header.Set(micro.ErrorHeader, `no family "nope"`)
		m.Data = []byte(`{"error":"not_found","error_description":"no family \"nope\""}`)
		return m
	})
	_, err := client.New(nc, "").Family(ctx(t), wire.FamilyRequest{FamilyID: "nope"})
	var e *client.Error
	if !errors.As(err, &e) || e.Code != client.CodeNotFound || e.Status != "404" || client.IsRetryable(err) {
		t.Fatalf("err = %#v", err)
	}
}

// TestRequestSaysHowLongTheCallerWaits: every request carries the time
// its caller has left, from the context's deadline or else Timeout, so
// tokend can leave alone what would be answered too late.
func TestRequestSaysHowLongTheCallerWaits(t *testing.T) {
	nc := connect(t)
	sent := make(chan string, 2)
	respond(t, nc, "tokens.cmd.refresh", func(m *nats.Msg) *nats.Msg {
		sent <- m.Header.Get(wire.HeaderTimeout)
		return &nats.Msg{Data: []byte(`{}`)}
	})
	c := client.New(nc, "")
	c.Timeout = 3 * time.Second
	for _, tc := range []struct {
		ctx      context.Context
		min, max time.Duration
	}{
		{context.Background(), time.Millisecond, 3 * time.Second}, // c.Timeout
		{ctx(t), 4 * time.Second, 5 * time.Second},                // the context's 5 s beat c.Timeout
	} {
		if _, err := c.Refresh(tc.ctx, wire.RefreshRequest{RefreshToken: "rt", ClientID: "web"}); err != nil {
			t.Fatal(err)
		}
		v := <-sent
		ms, err := time.ParseDuration(v + "ms")
		if err != nil || ms < tc.min || ms > tc.max {
			t.Errorf("%s = %q, want between %v and %v", wire.HeaderTimeout, v, tc.min, tc.max)
		}
	}
}
