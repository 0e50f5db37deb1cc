// Package eventstest starts in-process NATS servers and connections for
// tests, in the style of the nats-server test helpers: each function fails
// the test on error and registers its own cleanup.
//
// It does not import the events package, so that package's own tests can
// use it.
package eventstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MustServer starts a NATS server without JetStream on a free loopback port
// and shuts it down when the test ends.
func MustServer(tb testing.TB) *server.Server {
	tb.Helper()
	return start(tb, &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
}

// MustJetStream starts a NATS server with JetStream on a free loopback port
// and shuts it down when the test ends. It stores in tb.TempDir(), not in the
// default directory under os.TempDir() that every server would share.
//
// The JetStream limits are explicit (64 MiB of memory, 1 GiB of file
// storage) because by default JetStream sizes them at 75% of the machine's
// memory and of the free disk: explicit limits keep a test server small and
// the same on every machine.
func MustJetStream(tb testing.TB) *server.Server {
	tb.Helper()
	return start(tb, &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: tb.TempDir(), JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30})
}

func start(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	ns, err := server.NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats server did not start")
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// MustConnect connects to the NATS server at url and closes the connection
// when the test ends.
func MustConnect(tb testing.TB, url string) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// CheckFor calls f every interval until it returns nil, and fails the
// test with f's last error if that takes longer than total. Tests wait for
// a condition this way instead of sleeping for a guessed time.
func CheckFor(tb testing.TB, total, every time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

// MustJS starts a JetStream server (MustJetStream) and returns a connection
// to it and its JetStream context.
func MustJS(tb testing.TB) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc := MustConnect(tb, MustJetStream(tb).ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
}
