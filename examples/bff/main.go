// Command bff is a backend-for-frontend on tokend, small enough to read:
// the browser signs in with a form and gets a cookie holding only an
// opaque, signed session id; the session's refresh token stays on the
// server (client.Sessions), which calls an API with the session's access
// tokens. The API, served by the same process under /api/, checks them
// against tokend's keys, as any resource server would.
//
// Run it next to tokend, with short access tokens to watch them rotate:
//
//	go run ./cmd/tokend --access-ttl 20s
//	go run ./examples/bff
//
// and open http://127.0.0.1:8090: sign in as alice / wonderland. Reload
// after the access token expired and it is refreshed (one rotation however
// many tabs reload at once: go run ./cmd/tokenctl family -- ID shows
// them); revoke the family (go run ./cmd/tokenctl revoke --family ID) and
// the next refresh sends you to sign in; stop tokend and an expired
// session gets 503, not a sign-out, until tokend is back.
//
// Sessions live in memory; with --kv-bucket they live in a JetStream KV
// bucket, and several replicas (each with its own --listen, the same
// --cookie-key-file and --api-url) share them.
//
// With --dpop each session gets a DPoP key of its own (RFC 9449): its
// family is bound to the key at sign-in, every refresh carries a proof by
// it, and the API takes the access tokens only with a proof. The demo
// keeps the keys in its memory (client.MemoryDPoPKeys), so a restart
// signs every DPoP session out, and --dpop does not go with --kv-bucket:
// replicas would not share the keys. A real deployment keeps each key
// where its replicas find it, sealed, or in a KMS behind a crypto.Signer
// (see client.MemoryDPoPKeys).
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/client"
)

// config holds the flags.
type config struct {
	natsURL       string
	listen        string
	issuer        string
	apiURL        string
	kvBucket      string
	cookieKeyFile string
	dpop          bool
}

func main() {
	var cfg config
	flag.StringVar(&cfg.natsURL, "nats-url", "nats://127.0.0.1:4222", "NATS server of tokend")
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:8090", "HTTP listen address")
	flag.StringVar(&cfg.issuer, "issuer", "http://127.0.0.1:8080", "tokend's --issuer, checked by the demo API")
	flag.StringVar(&cfg.apiURL, "api-url", "", "the demo API the pages call, and the audience of the access tokens (default: this process's /api)")
	flag.StringVar(&cfg.kvBucket, "kv-bucket", "", "keep sessions in this JetStream KV bucket, shared by replicas (default: in memory)")
	flag.StringVar(&cfg.cookieKeyFile, "cookie-key-file", "", "key signing the session cookies, at least 32 bytes, the same on every replica (default: random)")
	flag.BoolVar(&cfg.dpop, "dpop", false, "bind each session's tokens to a DPoP key of its own, kept in memory (not with --kv-bucket)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", cfg.listen)
	if err == nil {
		err = run(ctx, cfg, ln, log)
	}
	if err != nil {
		log.Error("bff", "err", err)
		os.Exit(1)
	}
}

// run serves the demo on ln until ctx ends.
func run(ctx context.Context, cfg config, ln net.Listener, log *slog.Logger) error {
	// No reconnect buffer: a refresh held back during an outage and sent
	// late would be a replay (see package client).
	nc, err := nats.Connect(cfg.natsURL, nats.Name("bff-demo"), nats.MaxReconnects(-1), nats.ReconnectBufSize(-1))
	if err != nil {
		return fmt.Errorf("connecting to %s (is tokend running? go run ./cmd/tokend): %w", cfg.natsURL, err)
	}
	defer nc.Close()
	c := client.New(nc, "")
	if cfg.dpop && cfg.kvBucket != "" {
		return errors.New("--dpop keeps the sessions' keys in memory: replicas sharing --kv-bucket would not have them")
	}
	store, err := openStore(ctx, nc, cfg.kvBucket)
	if err != nil {
		return err
	}
	key, err := cookieKey(cfg)
	if err != nil {
		return err
	}

	base := "http://" + ln.Addr().String()
	apiURL := cmp.Or(cfg.apiURL, base+"/api")
	sc := client.SessionConfig{
		Key:        key,
		ClientID:   clientID,
		Audience:   apiURL,
		CookieName: "bff_demo_session",
		Insecure:   true, // plain http on loopback; never in production
		SignInURL:  "/signin",
		Log:        log,
	}
	if cfg.dpop {
		sc.DPoPKeys = &client.MemoryDPoPKeys{}
		// The URL the proofs name: tokend's token endpoint.
		sc.Options.DPoPURL = strings.TrimSuffix(cfg.issuer, "/") + "/oauth2/token"
	}
	sessions, err := client.NewSessions(c, store, sc)
	if err != nil {
		return err
	}
	defer sessions.Close() // after the server stopped: saves rotations in flight

	a := &app{c: c, sessions: sessions, apiURL: apiURL, log: log, dpop: cfg.dpop,
		api: &api{issuer: cfg.issuer, audience: apiURL, keys: &keySet{fetch: c.Keys, now: time.Now}}}
	srv := &http.Server{Handler: a.routes(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("bff demo: sign in as alice / wonderland", "url", base, "api", apiURL)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// openStore returns the session store: in memory, or the KV bucket.
func openStore(ctx context.Context, nc *nats.Conn, bucket string) (client.Store, error) {
	if bucket == "" {
		return client.NewMemoryStore(), nil
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	// History 1: no rotated token lingers as an old revision; TTL no
	// longer than tokend's --refresh-idle-ttl (see client.KVStore).
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: 1, TTL: 336 * time.Hour})
	if err != nil {
		return nil, fmt.Errorf("session bucket %s: %w", bucket, err)
	}
	return client.NewKVStore(kv), nil
}

// cookieKey reads the cookie key, or makes one for this process alone.
func cookieKey(cfg config) ([]byte, error) {
	if cfg.cookieKeyFile == "" {
		if cfg.kvBucket != "" {
			return nil, errors.New("--kv-bucket needs --cookie-key-file: replicas must share the cookie key")
		}
		key := make([]byte, client.MinSessionKey)
		_, err := rand.Read(key)
		return key, err
	}
	key, err := os.ReadFile(cfg.cookieKeyFile)
	if err != nil {
		return nil, err
	}
	if len(key) < client.MinSessionKey {
		return nil, fmt.Errorf("%s: the cookie key needs at least %d bytes", cfg.cookieKeyFile, client.MinSessionKey)
	}
	return key, nil
}
