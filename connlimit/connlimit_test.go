package connlimit

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// counted is a Listener on loopback with its hooks counted.
type counted struct {
	*Listener
	open, refused atomic.Int64
	accepted      chan net.Conn
}

func listen(t *testing.T, max int, refusal string) *counted {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &counted{accepted: make(chan net.Conn, 16)}
	c.Listener = New(inner, max, []byte(refusal), Hooks{
		Opened:  func() { c.open.Add(1) },
		Closed:  func() { c.open.Add(-1) },
		Refused: func() { c.refused.Add(1) },
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := c.Accept()
			if err != nil {
				return
			}
			c.accepted <- conn
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c
}

func dial(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readAll reads what the server sent until it closed the connection; the
// deadline only turns a hang into a failure.
func readAll(t *testing.T, conn net.Conn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the refusal: %v (got %q)", err, b)
	}
	return string(b)
}

// TestPastTheCapIsRefusedAtOnce: with the cap taken, a new connection is
// accepted, answered and closed while the others stay open, instead of
// waiting in the accept backlog; closing an admitted connection lets the
// next one in, and closing it twice frees one slot only.
func TestPastTheCapIsRefusedAtOnce(t *testing.T) {
	l := listen(t, 2, "busy\n")
	dial(t, l)
	dial(t, l)
	first, second := <-l.accepted, <-l.accepted

	over := dial(t, l)
	if got := readAll(t, over); got != "busy\n" {
		t.Fatalf("a connection past the cap got %q, want the refusal", got)
	}
	if l.refused.Load() != 1 || l.open.Load() != 2 {
		t.Fatalf("refused %d, open %d; want 1 and 2", l.refused.Load(), l.open.Load())
	}

	first.Close()
	first.Close()
	if l.open.Load() != 1 {
		t.Fatalf("open %d after closing one connection twice, want 1", l.open.Load())
	}
	dial(t, l)
	third := <-l.accepted
	if over := dial(t, l); readAll(t, over) != "busy\n" {
		t.Fatal("the cap let a third connection in after one slot was freed")
	}
	second.Close()
	third.Close()
	if l.open.Load() != 0 || l.refused.Load() != 2 {
		t.Fatalf("open %d, refused %d; want 0 and 2", l.open.Load(), l.refused.Load())
	}
}

// TestRefusalWithoutAnswer: with no refusal text (TLS, where clear text
// would be garbage to the client) the connection is only closed.
func TestRefusalWithoutAnswer(t *testing.T) {
	l := listen(t, 1, "")
	dial(t, l)
	<-l.accepted
	if got := readAll(t, dial(t, l)); got != "" {
		t.Fatalf("got %q, want a bare close", got)
	}
}

// TestAcceptEndsWithTheListener: closing the listener ends Accept with
// the inner listener's error, as http.Server.Shutdown expects.
func TestAcceptEndsWithTheListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, 1, nil, Hooks{})
	l.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

// TestCloseWriteReachesTheSocket: net/http half-closes a connection after
// an error response; the wrapper must pass that on, not hide it.
func TestCloseWriteReachesTheSocket(t *testing.T) {
	l := listen(t, 1, "")
	client := dial(t, l)
	server := <-l.accepted
	defer server.Close()
	if err := server.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, client); got != "" {
		t.Fatalf("got %q after a half-close", got)
	}
}
