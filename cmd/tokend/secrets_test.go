package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/events/eventstest"
)

// TestNoTokenAtRest runs a mixed workload on an embedded server, then scans
// every file of the data directory and the debug-level logs for every token
// handed out, whole and for its secret part alone.
func TestNoTokenAtRest(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReuseInterval = 300 * time.Millisecond
	logs := &syncBuffer{}
	app := MustApp(t, cfg, logs)
	nc := eventstest.MustConnect(t, app.NATSURL())

	var secrets []string
	keep := func(r reply) reply {
		if r.token.RefreshToken != "" {
			secrets = append(secrets, r.token.RefreshToken, r.token.AccessToken)
		}
		return r
	}
	for i := range 5 {
		f := keep(reply{token: mustIssue(t, nc, "user-scan", "web-app")}).token
		cur := f.RefreshToken
		for range 3 {
			cur = keep(reply{token: mustRefresh(t, nc, cur, "web-app")}).token.RefreshToken
		}
		keep(refresh(t, nc, f.RefreshToken, "other-client"))
		keep(reply{token: mustRefresh(t, nc, cur, "web-app")})
		if i%2 == 0 {
			time.Sleep(cfg.ReuseInterval)
			keep(refresh(t, nc, f.RefreshToken, "web-app")) // replay: revokes
		}
	}
	app.Stop()

	var needles [][]byte
	for _, s := range secrets {
		needles = append(needles, []byte(s))
		if parts := strings.Split(s, "."); len(parts) == 6 { // the refresh token's random secret
			needles = append(needles, []byte(parts[4]))
		}
	}
	scanned := 0
	err := filepath.WalkDir(cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		scanned++
		for _, n := range needles {
			if bytes.Contains(data, n) {
				t.Errorf("%s holds a token handed out to a client", path)
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned < 3 {
		t.Fatalf("scanned only %d files: the store is not where the test looks", scanned)
	}
	if !strings.Contains(logs.String(), "tokend ready") {
		t.Fatal("logs were not captured")
	}
	for _, n := range needles {
		if strings.Contains(logs.String(), string(n)) {
			t.Fatal("the logs hold a token handed out to a client")
		}
	}
	// Guard against a scan that cannot fail: the stream does hold the hashes.
	if len(secrets) < 20 {
		t.Fatalf("the workload handed out only %d tokens", len(secrets))
	}
}
