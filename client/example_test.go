package client_test

import (
	"context"
	"log"
	"net/http"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/oauth2"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

// A service keeps its users' sessions in a KV bucket shared by its
// replicas, and calls an API with each session's access tokens.
func ExampleSource() {
	ctx := context.Background()
	// No reconnect buffer: a refresh held back during an outage and sent
	// late would be a replay.
	nc, err := nats.Connect(nats.DefaultURL, nats.MaxReconnects(-1), nats.ReconnectBufSize(-1))
	if err != nil {
		log.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "WEB_SESSIONS", History: 1})
	if err != nil {
		log.Fatal(err)
	}
	c := client.New(nc, "")
	store := client.NewKVStore(kv)

	// At sign-in: issue a family and begin the session with it.
	issued, err := c.Issue(ctx, wire.IssueRequest{Subject: "user-42", ClientID: "web-app",
		Scope: "api:read api:write", Audience: []string{"https://api.example.com"}})
	if err != nil {
		log.Fatal(err)
	}
	src := client.NewSource(c, store, "session-7f3a", client.Options{
		OnTerminal: func(error) { log.Print("session over: sign the user out") },
	})
	defer src.Close()
	if err := src.Begin(ctx, "web-app", issued); err != nil {
		log.Fatal(err)
	}

	// On each request: a token for the API, from the cache or refreshed.
	at, err := src.Token(ctx, "https://api.example.com", "api:read")
	switch {
	case client.Terminal(err):
		return // signed out by OnTerminal: ask the user to sign in again
	case err != nil:
		log.Print(err) // transient: fail this request, keep the session
		return
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.example.com/v1/me", nil)
	req.Header.Set("Authorization", "Bearer "+at.Token)

	// Or let an oauth2 client add it.
	api := oauth2.NewClient(ctx, src.OAuth2("https://api.example.com", "api:read"))
	_, _ = api.Get("https://api.example.com/v1/me")

	// At sign-out: revoke the family and forget the session.
	_ = src.End(ctx)
}
