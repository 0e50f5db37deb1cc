package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/client"
)

// connect starts an in-process NATS server and returns a connection to it.
func connect(t *testing.T) *nats.Conn {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
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
	var got api.IssueRequest
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
	reply, err := c.Issue(ctx(t), api.IssueRequest{Subject: "user-42", ClientID: "web", Scope: "a b",
		Audience: []string{"https://api.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	want := api.TokenReply{RefreshToken: "rt", FamilyID: "fam-1", TokenType: "Bearer", AccessToken: "at",
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
	replies := map[string]api.ErrorReply{
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

	_, err = c.Refresh(ctx(t), api.RefreshRequest{RefreshToken: "x", ClientID: "web"})
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
	_, err = c.Revoke(ctx(t), api.RevokeRequest{FamilyID: &fam})
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
	_, err := client.New(nc, "").Issue(ctx(t), api.IssueRequest{Subject: "s", ClientID: "c"})
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
	_, err := client.New(nc, "").Issue(ctx(t), api.IssueRequest{Subject: "s", ClientID: "c"})
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
