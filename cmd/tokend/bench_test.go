package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
)

// introspectBench is a tokend with its OAuth listener on, 500 families of
// the confidential client web-app, and what introspecting them needs.
type introspectBench struct {
	app    *App
	nc     *nats.Conn
	issuer string
	secret string
	http   *http.Client
	tokens []wire.TokenReply
}

func mustIntrospectBench(b *testing.B) *introspectBench {
	cfg := oauthConfig(b, "")
	cfg.IssueRate, cfg.RefreshRate = 0, 0 // the setup and the load go faster than a client may
	e := &introspectBench{app: MustApp(b, cfg, nil), issuer: cfg.Issuer, secret: "bench-secret-0123456789abcdef0123456789",
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}, tokens: make([]wire.TokenReply, 500)}
	e.nc = eventstest.MustConnect(b, e.app.NATSURL())
	client := domain.Client{ID: "web-app", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic,
		Scopes: []string{"openid", "api:read", "api:write"}, Audiences: []string{"https://api.example.com", "https://billing.example.com"}}
	if _, err := e.app.Clients().Put(b.Context(), client, domain.HashClientSecret(e.secret), 0, registry.Actor{By: "bench"}); err != nil {
		b.Fatal(err)
	}
	var last uint64
	for i := range e.tokens {
		e.tokens[i] = mustIssue(b, e.nc, "user-bench", "web-app")
		last = e.tokens[i].Seq
	}
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
	defer cancel()
	if err := e.app.projector.WaitFor(ctx, last); err != nil {
		b.Fatal(err)
	}
	return e
}

// rotate keeps n workers rotating families of their own over NATS until
// the returned stop is called.
func (e *introspectBench) rotate(b *testing.B, n int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		token := mustIssue(b, e.nc, "user-load", "web-app").RefreshToken
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				data, _ := json.Marshal(wire.RefreshRequest{RefreshToken: token, ClientID: "web-app"})
				msg, err := e.nc.Request("tokens.cmd.refresh", data, 5*time.Second)
				var r wire.TokenReply
				if err == nil && json.Unmarshal(msg.Data, &r) == nil && r.RefreshToken != "" {
					token = r.RefreshToken
				}
			}
		})
	}
	return func() { close(done); wg.Wait() }
}

func (e *introspectBench) overNATS(tb testing.TB, i int) {
	data, _ := json.Marshal(map[string]string{"refresh_token": e.tokens[i%len(e.tokens)].RefreshToken})
	msg, err := e.nc.Request("tokens.query.introspect", data, 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	var r wire.Introspection
	if err := json.Unmarshal(msg.Data, &r); err != nil || !r.Active {
		tb.Fatalf("introspect: %s", msg.Data)
	}
}

func (e *introspectBench) overHTTP(tb testing.TB, token string) {
	req, _ := http.NewRequest(http.MethodPost, e.issuer+"/oauth2/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("web-app", e.secret)
	resp, err := e.http.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Active bool `json:"active"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || !body.Active {
		tb.Fatalf("introspect: %d %v %v", resp.StatusCode, body, err)
	}
}

// BenchmarkIntrospect measures introspection end to end from a client in
// the same process (embedded NATS): tokens.query.introspect, and
// POST /oauth2/introspect with client_secret_basic for a refresh and an
// access token, one caller at a time and 16 in parallel, idle and while
// 8 workers rotate other families as fast as tokend answers.
//
//	go test -run '^$' -bench Introspect -benchtime 2s ./cmd/tokend
func BenchmarkIntrospect(b *testing.B) {
	e := mustIntrospectBench(b)
	paths := map[string]func(tb testing.TB, i int){
		"nats":         e.overNATS,
		"http-refresh": func(tb testing.TB, i int) { e.overHTTP(tb, e.tokens[i%len(e.tokens)].RefreshToken) },
		"http-access":  func(tb testing.TB, i int) { e.overHTTP(tb, e.tokens[i%len(e.tokens)].AccessToken) },
	}
	for _, load := range []int{0, 8} {
		for _, path := range []string{"nats", "http-refresh", "http-access"} {
			introspect := paths[path]
			b.Run(fmt.Sprintf("%s/rotating=%d/serial", path, load), func(b *testing.B) {
				stop := e.rotate(b, load)
				defer stop()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					introspect(b, i)
				}
			})
			b.Run(fmt.Sprintf("%s/rotating=%d/parallel", path, load), func(b *testing.B) {
				stop := e.rotate(b, load)
				defer stop()
				b.ResetTimer()
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					for i := 0; pb.Next(); i++ {
						introspect(b, i)
					}
				})
			})
		}
	}
}
