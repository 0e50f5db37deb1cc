package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
)

// BenchmarkRefreshPaths compares one rotation over the OAuth token endpoint
// (HTTP, client_secret_basic) with one over NATS (tokens.cmd.refresh), end
// to end from a client in the same process, each worker rotating its own
// family; http-dpop is the HTTP path with a family bound to a DPoP key,
// each refresh with a new ES256 proof (made by the benchmark, whose cost
// shares the machine). It reports rotations per second and the p50/p99
// latency.
//
//	go test -run '^$' -bench RefreshPaths -benchtime 5s ./cmd/tokend
func BenchmarkRefreshPaths(b *testing.B) {
	cfg := oauthConfig(b, "")
	cfg.IssueRate, cfg.RefreshRate = 0, 0
	app := MustApp(b, cfg, nil)
	nc := eventstest.MustConnect(b, app.NATSURL())
	secret := "bench-secret-0123456789abcdef0123456789"
	client := domain.Client{ID: "web-app", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic,
		Scopes: []string{"openid", "api:read", "api:write"}, Audiences: []string{"https://api.example.com", "https://billing.example.com"}}
	if _, err := app.Clients().Put(b.Context(), client, domain.HashClientSecret(secret), 0, registry.Actor{By: "bench"}); err != nil {
		b.Fatal(err)
	}
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	key := newProver(b)
	overHTTP := func(tb testing.TB, token string, dpop bool) string {
		req, _ := http.NewRequest(http.MethodPost, cfg.Issuer+"/oauth2/token",
			strings.NewReader(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("web-app", secret)
		if dpop {
			req.Header.Set("DPoP", key.proof(tb, http.MethodPost, cfg.Issuer+"/oauth2/token"))
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			tb.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			RefreshToken string `json:"refresh_token"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK {
			tb.Fatalf("token endpoint: %d %v", resp.StatusCode, err)
		}
		return body.RefreshToken
	}
	paths := map[string]func(tb testing.TB, token string) string{
		"nats":      func(tb testing.TB, token string) string { return mustRefresh(tb, nc, token, "web-app").RefreshToken },
		"http":      func(tb testing.TB, token string) string { return overHTTP(tb, token, false) },
		"http-dpop": func(tb testing.TB, token string) string { return overHTTP(tb, token, true) },
	}
	for _, name := range []string{"nats", "http", "http-dpop"} {
		b.Run(name, func(b *testing.B) {
			var (
				mu        sync.Mutex
				latencies []time.Duration
			)
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				var token string
				if name == "http-dpop" {
					token = issueBound(b, nc, "web-app", key.jkt).RefreshToken
				} else {
					token = mustIssue(b, nc, "user-bench", "web-app").RefreshToken
				}
				var mine []time.Duration
				for pb.Next() {
					start := time.Now()
					token = paths[name](b, token)
					mine = append(mine, time.Since(start))
				}
				mu.Lock()
				latencies = append(latencies, mine...)
				mu.Unlock()
			})
			slices.Sort(latencies)
			if n := len(latencies); n > 0 {
				b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "rotations/s")
				b.ReportMetric(float64(latencies[n/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(latencies[n*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
